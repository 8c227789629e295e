# Videos -> frames (decord) -> features (frozen vision tower, once per frame, reused by every arm).


rule synth_corpus:
    output:
        train=f"{DATA}/corpus/train.json",
        eval=f"{DATA}/corpus/eval.json",
        videos=f"{DATA}/corpus/videos.json",
    params:
        code=code_version("synth"),
        options=cli_options(CFG["data"]["synthetic"]),
        seed=CFG["seed"],
    log:
        f"{LOGS}/synth_corpus.log",
    shell:
        "visctx synth --out-dir $(dirname {output.train}) {params.options} --seed {params.seed} > {log} 2>&1"


rule render_videos:
    input:
        videos=rules.synth_corpus.output.videos,
    output:
        manifest=f"{DATA}/videos/{{split}}/shard-{{shard}}.json",
    params:
        code=code_version("synth"),
        n_shards=lambda w: n_shards(w.split),
    log:
        f"{LOGS}/render_videos/{{split}}-{{shard}}.log",
    shell:
        "visctx render --videos-json {input.videos} --video-root {DATA}/videos --split {wildcards.split}"
        " --shard {wildcards.shard} --n-shards {params.n_shards} --manifest-out {output.manifest} > {log} 2>&1"


rule benchmark_items:
    input:
        annotations=lambda w: CFG["benchmarks"][w.benchmark]["annotations"],
    output:
        json=f"{DATA}/benchmarks/{{benchmark}}.json",
    params:
        code=code_version("benchmarks"),
        root=lambda w: video_root(w.benchmark),
    log:
        f"{LOGS}/benchmark_items/{{benchmark}}.log",
    shell:
        "visctx benchmark-items --benchmark {wildcards.benchmark} --annotations {input.annotations:q}"
        " --video-root {params.root:q} --out-json {output.json} > {log} 2>&1"


def videos_of(wildcards):
    """Synthetic videos must be rendered first; real ones are simply on disk."""
    if SYNTHETIC and wildcards.split in ("train", "eval"):
        return expand(rules.render_videos.output.manifest, split=wildcards.split, shard=shards(wildcards.split))
    return []


rule extract_frames:
    input:
        corpus=lambda w: corpus_json(w.split),
        videos=videos_of,
    output:
        npy=f"{DATA}/frames/{{split}}/shard-{{shard}}.npy",
        json=f"{DATA}/frames/{{split}}/shard-{{shard}}.json",
    params:
        code=code_version("video"),
        root=lambda w: video_root(w.split),
        n_shards=lambda w: n_shards(w.split),
        options=cli_options({k: v for k, v in CFG["data"]["extract"].items() if k != "max_quarantined"}),
    log:
        f"{LOGS}/extract_frames/{{split}}-{{shard}}.log",
    shell:
        "visctx extract --corpus-json {input.corpus} --video-root {params.root} --shard {wildcards.shard}"
        " --n-shards {params.n_shards} {params.options} --out-npy {output.npy} --out-json {output.json} > {log} 2>&1"


# Unreadable videos are left out of their shard and listed in its JSON; per split they are gathered
# here, and a split that lost more than data.extract.max_quarantined of its videos fails (training
# and evaluation take the split's report as input, so they never run on it).
rule quarantine_split:
    input:
        frames=lambda w: expand(rules.extract_frames.output.json, split=w.split, shard=shards(w.split)),
    output:
        json=f"{DATA}/quarantine/{{split}}.json",
    params:
        code=code_version("quarantine"),
        max_quarantined=CFG["data"]["extract"]["max_quarantined"],
    log:
        f"{LOGS}/quarantine/{{split}}.log",
    shell:
        "visctx quarantine-split --frames-jsons {input.frames} --split {wildcards.split}"
        " --max-quarantined {params.max_quarantined} --out-json {output.json} > {log} 2>&1"


rule quarantine_report:
    input:
        splits=expand(rules.quarantine_split.output.json, split=SPLITS),
    output:
        json=f"{DATA}/quarantine.json",
        tsv=f"{DATA}/quarantine.tsv",
    params:
        code=code_version("quarantine"),
    log:
        f"{LOGS}/quarantine_report.log",
    shell:
        "visctx quarantine-report --split-jsons {input.splits} --out-json {output.json}"
        " --out-tsv {output.tsv} > {log} 2>&1"


rule init_vision_tower:
    output:
        directory(f"{RESULTS}/models/pretrained/vision"),
    params:
        code=code_version("features"),
        options=cli_options(CFG["model"]["tiny"]["vision"]),
        seed=CFG["seed"],
    log:
        f"{LOGS}/init_vision_tower.log",
    shell:
        "visctx init-vision --out-dir {output} {params.options} --seed {params.seed} > {log} 2>&1"


rule init_llm:
    input:
        train=corpus_json("train"),
        eval=corpus_json("eval"),
    output:
        directory(f"{RESULTS}/models/pretrained/llm"),
    params:
        code=code_version("pretrained"),
        options=cli_options(CFG["model"]["tiny"]["llm"]),
        max_frames=CFG["data"]["extract"]["max_frames"],
        seed=CFG["seed"],
    log:
        f"{LOGS}/init_llm.log",
    shell:
        "visctx init-llm --out-dir {output} --corpus-jsons {input.train} {input.eval}"
        " --max-frames {params.max_frames} {params.options} --seed {params.seed} > {log} 2>&1"


rule encode_features:
    input:
        npy=rules.extract_frames.output.npy,
        json=rules.extract_frames.output.json,
        tower=rules.init_vision_tower.output if TINY else [],
    output:
        npy=f"{DATA}/features/{{split}}/shard-{{shard}}.npy",
        json=f"{DATA}/features/{{split}}/shard-{{shard}}.json",
    params:
        code=code_version("features"),
        tower=vision_tower(),
        layer=CFG["model"]["vision_layer"],
        batch_size=CFG["features"]["batch_size"],
    threads: 1
    log:
        f"{LOGS}/encode_features/{{split}}-{{shard}}.log",
    shell:
        "visctx encode --frames-npy {input.npy} --frames-json {input.json} --vision-tower {params.tower}"
        " --layer {params.layer} --batch-size {params.batch_size} --threads {threads}"
        " --out-npy {output.npy} --out-json {output.json} > {log} 2>&1"


rule data_all:
    input:
        [visual_shards(split) for split in SPLITS],
        rules.quarantine_report.output,
        rules.init_llm.output if TINY else [],
