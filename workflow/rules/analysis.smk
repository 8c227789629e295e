# Fits, tables, figures and metrics from the tidy table; cheap, so a new window budget
# (the top-level key window) reruns only these rules and never retrains an arm.

# Must equal visctx.report.TABLES / FIGURES (tests/test_workflow.py checks it): listed here so
# the workflow loads without importing the plotting stack.
TABLES = ["table1_tokens", "table2_frames", "table3_joint", "table4_window", "table5_fits", "model_selection",
          "benchmarks", "findings", "table6_methods", "learned_by_task"]
FIGURES = ["tokens_loss", "frames_loss", "joint_contour", "accuracy_by_task", "ceiling_gap", "methods_window"]
ANALYSIS = CFG["analysis"]
CEILING = " --ceiling-fits {input.ceiling}" if SYNTHETIC else ""  # the laws of the ceiling, beside the study's


rule fits:
    input:
        arms=rules.collect.output.arms,
        design=rules.collect.output.design,
        videos=rules.collect.output.videos,
    output:
        json=f"{RESULTS}/fits/fits.json",
    params:
        code=code_version("fit"),
        budget=CFG["window"],
        n_boot=ANALYSIS["n_boot"],
        seed=ANALYSIS["seed"],
        t_max=CFG["data"]["extract"]["max_frames"],  # the optimum cannot use more frames than are kept
    threads: 2
    log:
        f"{LOGS}/fits.log",
    shell:
        "visctx fits --arms-csv {input.arms} --design-csv {input.design} --budget {params.budget}"
        " --videos-csv {input.videos} --n-boot {params.n_boot} --seed {params.seed} --t-max {params.t_max} --workers {threads}"
        " --out-json {output.json} > {log} 2>&1"


# The laws and the optimum of the ceiling itself: the reference the trained study should approach.
if SYNTHETIC:

    rule ceiling_fits:
        input:
            arms=rules.ceiling.output.csv,
            design=rules.collect.output.design,
        output:
            json=f"{RESULTS}/fits/ceiling.json",
        params:
            code=code_version("fit"),
            budget=CFG["window"],
            n_boot=ANALYSIS["n_boot"],
            seed=ANALYSIS["seed"],
            t_max=CFG["data"]["extract"]["max_frames"],
        threads: 2
        log:
            f"{LOGS}/ceiling_fits.log",
        shell:
            "visctx fits --arms-csv {input.arms} --design-csv {input.design} --budget {params.budget}"
            " --n-boot {params.n_boot} --seed {params.seed} --t-max {params.t_max} --workers {threads}"
            " --out-json {output.json} > {log} 2>&1"


rule tables:
    input:
        arms=rules.collect.output.arms,
        design=rules.collect.output.design,
        fits=rules.fits.output.json,
        ceiling=rules.ceiling_fits.output.json if SYNTHETIC else [],
        scores=rules.benchmark_scores.output.csv,
    output:
        csv=[report(f"{RESULTS}/tables/{t}.csv", caption=f"../report/{t}.rst", category="Tables") for t in TABLES],
        md=[f"{RESULTS}/tables/{t}.md" for t in TABLES],
        tex=[f"{RESULTS}/tables/{t}.tex" for t in TABLES],
    params:
        code=code_version("report"),
    log:
        f"{LOGS}/tables.log",
    shell:
        "visctx tables --arms-csv {input.arms} --design-csv {input.design} --fits-json {input.fits}"
        " --scores-csv {input.scores} --out-dir {RESULTS}/tables" + CEILING + " > {log} 2>&1"


rule figures:
    input:
        arms=rules.collect.output.arms,
        design=rules.collect.output.design,
        fits=rules.fits.output.json,
        ceiling=rules.ceiling_fits.output.json if SYNTHETIC else [],
    output:
        [report(f"{RESULTS}/figures/{f}.png", caption=f"../report/{f}.rst", category="Figures") for f in FIGURES],
        [f"{RESULTS}/figures/{f}.pdf" for f in FIGURES],
    params:
        code=code_version("report"),
    log:
        f"{LOGS}/figures.log",
    shell:
        "visctx figures --arms-csv {input.arms} --design-csv {input.design} --fits-json {input.fits}"
        " --out-dir {RESULTS}/figures" + CEILING + " > {log} 2>&1"


rule metrics:
    input:
        arms=rules.collect.output.arms,
        design=rules.collect.output.design,
        fits=rules.fits.output.json,
        ceiling=rules.ceiling_fits.output.json if SYNTHETIC else [],
    output:
        json=f"{RESULTS}/metrics.json",  # the headline, for dvc exp show
        full=f"{RESULTS}/metrics_full.json",
    params:
        code=code_version("report"),
    log:
        f"{LOGS}/metrics.log",
    shell:
        "visctx metrics --arms-csv {input.arms} --design-csv {input.design} --fits-json {input.fits}"
        " --out-json {output.json} --full-json {output.full}" + CEILING + " > {log} 2>&1"


if SYNTHETIC:

    # Every trained arm against the accuracy and loss bounds (what its frames show) and the share rule's ceiling
    rule ceiling_check:
        input:
            arms=rules.collect.output.arms,
            ceiling=rules.ceiling.output.csv,
        output:
            csv=report(f"{RESULTS}/tables/ceiling_check.csv", caption="../report/ceiling_check.rst", category="Tables"),
            md=f"{RESULTS}/tables/ceiling_check.md",
        params:
            code=code_version("ceiling"),
        log:
            f"{LOGS}/ceiling_check.log",
        shell:
            "visctx ceiling-check --arms-csv {input.arms} --ceiling-csv {input.ceiling} --out-dir {RESULTS}/tables"
            " > {log} 2>&1"


rule analysis_all:
    input:
        rules.tables.output,
        rules.figures.output,
        rules.metrics.output,
        rules.ceiling_check.output if SYNTHETIC else [],
