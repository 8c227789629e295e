# One job per (arm, benchmark): adding a benchmark never retrains anything, and a changed arm is
# evaluated again alone. Evaluation never imports Lightning.
from visctx.benchmarks import scoring_mode  # evaluate.scoring: one mode, or one per benchmark

def eval_inputs(wildcards):
    split = eval_split(wildcards.benchmark)
    return {"eval": corpus_json(split), "visual": visual_shards(split), "quarantine": quarantine_json(split)}


rule evaluate_arm:
    input:
        unpack(eval_inputs),
        model=rules.train_arm.output.model,
    output:
        json=ARM_EVAL_JSON,
    params:
        code=code_version("evaluate"),
        visual=lambda w: visual_dir(eval_split(w.benchmark)),
        batch_size=CFG["evaluate"]["batch_size"],
        answer=cli_options({k: CFG["evaluate"][k] for k in ("answer_mode", "max_new_tokens")}),
        scoring=lambda w: scoring_mode(CFG["evaluate"].get("scoring"), w.benchmark),
    threads: 1
    log:
        f"{ARMS_DIR}/{{arm}}/eval/{{benchmark}}.log",
    shell:
        "visctx evaluate-arms --arms {wildcards.arm} --arms-dir {RESULTS}/arms/seed{wildcards.seed} --eval-json {input.eval}"
        " --features-dir {params.visual} --benchmark {wildcards.benchmark} --batch-size {params.batch_size}"
        " {params.answer} --scoring {params.scoring} --threads {threads} > {log} 2>&1"


# The information ceiling of every arm: what its exact context can recover of each held-out answer
# (synthetic corpus only: its scene specs say what is where, when).
if SYNTHETIC:

    rule ceiling:
        input:
            videos=rules.synth_corpus.output.videos,
            eval=corpus_json("eval"),
        output:
            csv=f"{RESULTS}/tables/ceiling.csv",
        params:
            code=code_version("ceiling"),
            studies=dumps(CFG["studies"]),
            fps=CFG["data"]["extract"]["fps"],
            max_frames=CFG["data"]["extract"]["max_frames"],
            share=CFG["ceiling"]["visible_share"],
            chroma=CFG["ceiling"]["chroma_noise"],
        log:
            f"{LOGS}/ceiling.log",
        shell:
            "visctx ceiling --videos-json {input.videos} --eval-json {input.eval} --studies {params.studies:q}"
            " --extract-fps {params.fps} --max-frames {params.max_frames} --threshold {params.share}"
            " --chroma-noise {params.chroma}"
            " --out-csv {output.csv} > {log} 2>&1"


# Each arm's steps come from the train_summary.json of the model its evaluation names (an evaluation
# reruns whenever its model does, so the evaluations are the inputs that carry them).
rule collect:
    input:
        evals=expand(rules.evaluate_arm.output.json, arm=ARMS, seed=SEEDS, benchmark=BENCHMARKS),
        ceiling=rules.ceiling.output.csv if SYNTHETIC else [],
    output:
        arms=report(f"{RESULTS}/tables/arms.csv", caption="../report/arms.rst", category="Tables"),
        design=f"{RESULTS}/tables/design.csv",
        videos=f"{RESULTS}/tables/videos.csv",
    params:
        code=code_version("collect"),
        studies=dumps(CFG["studies"]),
    log:
        f"{LOGS}/collect.log",
    shell:
        "visctx collect --evals {input.evals} --studies {params.studies:q}"
        " --out-arms {output.arms} --out-design {output.design} --out-videos {output.videos}"
        + (" --ceiling-csv {input.ceiling}" if SYNTHETIC else "") + " > {log} 2>&1"


# Each arm's official score per benchmark, with intervals over seeds and (clustered) videos, and its
# paired difference to the best arm: the benchmark table's numbers.
rule benchmark_scores:
    input:
        evals=rules.collect.input.evals,
        questions=[corpus_json(eval_split(b)) for b in BENCHMARKS],
    output:
        csv=f"{RESULTS}/tables/benchmark_scores.csv",
    params:
        code=code_version("collect"),
        n_boot=CFG["analysis"]["n_boot"],
        seed=CFG["analysis"]["seed"],
    log:
        f"{LOGS}/benchmark_scores.log",
    shell:
        "visctx benchmark-scores --evals {input.evals} --items-jsons {input.questions} --n-boot {params.n_boot}"
        " --seed {params.seed} --out-csv {output.csv} > {log} 2>&1"


# Every training run's loss curve, one long table (a DVC plot: dvc plots show results/tables/curves.csv).
rule curves:
    input:
        models=expand(rules.train_arm.output.model, arm=ARMS, seed=SEEDS)
        + (expand(rules.train_base.output.model, seed=SEEDS) if BASE else []),
    output:
        csv=f"{RESULTS}/tables/curves.csv",
    params:
        code=code_version("collect"),
    log:
        f"{LOGS}/curves.log",
    shell:
        "visctx curves --models {input.models} --out-csv {output.csv} > {log} 2>&1"


rule train_all:
    input:
        rules.collect.output,
        rules.benchmark_scores.output,
        rules.curves.output,


# Needle in a haystack on the frame study's sampling arms (synthetic corpus: the needle frame of
# every video is known from its scene spec).
NIAH_ARMS = list(dict.fromkeys(p.arm.id for p in POINTS if p.study == "frames" and p.method == "sample"))
NIAH = SYNTHETIC and bool(NIAH_ARMS)

if NIAH:

    rule niah:
        input:
            models=expand(rules.train_arm.output.model, arm=NIAH_ARMS, allow_missing=True),
            eval=corpus_json("eval"),
            videos=rules.synth_corpus.output.videos,
            visual=visual_shards("eval"),
            quarantine=quarantine_json("eval"),
        output:
            csv=f"{RESULTS}/niah/seed{{seed}}.csv",
        params:
            code=code_version("niah"),
            arms=" ".join(NIAH_ARMS),
            visual=visual_dir("eval"),
            fps=CFG["data"]["extract"]["fps"],
            batch_size=CFG["evaluate"]["batch_size"],
            share=CFG["ceiling"]["visible_share"],
            chroma=CFG["ceiling"]["chroma_noise"],
            every="",  # the frame study: each arm is asked the needles its tokens can carry
        threads: 1
        log:
            f"{LOGS}/niah/seed{{seed}}.log",
        shell:
            "visctx niah --arms {params.arms} --arms-dir {RESULTS}/arms/seed{wildcards.seed} --eval-json {input.eval}"
            " --videos-json {input.videos} --features-dir {params.visual} --extract-fps {params.fps}"
            " --batch-size {params.batch_size} --threads {threads} --visible-share {params.share}"
            " --chroma-noise {params.chroma} {params.every}"
            " --out-csv {output.csv} > {log} 2>&1"

    # every replicate's map, their mean and its across-seed interval: one table and one heatmap
    rule niah_summary:
        input:
            csvs=expand(rules.niah.output.csv, seed=SEEDS),
        output:
            csv=f"{RESULTS}/niah/niah.csv",
            png=report(f"{RESULTS}/niah/niah_heatmap.png", caption="../report/niah.rst", category="Figures"),
        params:
            code=code_version("niah"),
        log:
            f"{LOGS}/niah_summary.log",
        shell:
            "visctx niah-summary --csvs {input.csvs} --out-csv {output.csv} --out-png {output.png} > {log} 2>&1"


# The same map on the methods study's arms: one window spent by sampling, pooling, masking and
# summary tokens (one heatmap per method).
NIAH_METHOD_ARMS = list(dict.fromkeys(p.arm.id for p in POINTS if p.study == "methods"))
NIAH_METHODS = SYNTHETIC and bool(NIAH_METHOD_ARMS)

if NIAH_METHODS:

    use rule niah as niah_methods with:
        input:
            models=expand(rules.train_arm.output.model, arm=NIAH_METHOD_ARMS, allow_missing=True),
            eval=corpus_json("eval"),
            videos=rules.synth_corpus.output.videos,
            visual=visual_shards("eval"),
            quarantine=quarantine_json("eval"),
        output:
            csv=f"{RESULTS}/niah/methods/seed{{seed}}.csv",
        params:
            code=code_version("niah"),
            arms=" ".join(NIAH_METHOD_ARMS),
            visual=visual_dir("eval"),
            fps=CFG["data"]["extract"]["fps"],
            batch_size=CFG["evaluate"]["batch_size"],
            share=CFG["ceiling"]["visible_share"],
            chroma=CFG["ceiling"]["chroma_noise"],
            every="--every-needle",  # every method the same needles: what its tokens drop counts
        log:
            f"{LOGS}/niah/methods/seed{{seed}}.log",

    rule niah_methods_summary:
        input:
            csvs=expand(rules.niah_methods.output.csv, seed=SEEDS),
        output:
            csv=f"{RESULTS}/niah/methods.csv",
            png=report(f"{RESULTS}/niah/niah_methods.png", caption="../report/niah_methods.rst", category="Figures"),
        params:
            code=code_version("niah"),
        log:
            f"{LOGS}/niah_methods_summary.log",
        shell:
            "visctx niah-summary --csvs {input.csvs} --out-csv {output.csv} --out-png {output.png} --by-method"
            " > {log} 2>&1"


rule niah_all:
    input:
        rules.niah_summary.output if NIAH else [],
        rules.niah_methods_summary.output if NIAH_METHODS else [],
