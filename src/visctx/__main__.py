from visctx.cli import main

raise SystemExit(main())
