# Jobs per (arms, benchmark): adding a benchmark never retrains anything. Arms are grouped like
# training (`evaluate.arms_per_job`; 1 on a cluster); evaluation never imports Lightning.
ARM_EVAL = dict(
    code=code_version("evaluate", "model", "data", "context", "benchmarks"),
    batch_size=CFG["evaluate"]["batch_size"],
)
ARM_EVAL_SHELL = (
    "visctx evaluate-arms --arms {params.arms} --arms-dir {RESULTS}/arms --eval-json {input.eval}"
    " --features-dir {params.features} --benchmark {wildcards.benchmark} --batch-size {params.batch_size}"
    " --threads {threads} > {log} 2>&1"
)


def eval_inputs(wildcards):
    split = eval_split(wildcards.benchmark)
    return {"eval": corpus_json(split), "features": feature_shards(split), "quarantine": quarantine_json(split)}


if CFG["evaluate"]["arms_per_job"] == 1:

    rule evaluate_arm:
        input:
            unpack(eval_inputs),
            model=ARM_MODEL,
        output:
            json=ARM_EVAL_JSON,
        params:
            arms="{arm}",
            features=lambda w: f"{DATA}/features/{eval_split(w.benchmark)}",
            **ARM_EVAL,
        threads: 1
        log:
            f"{RESULTS}/arms/{{arm}}/eval/{{benchmark}}.log",
        shell:
            ARM_EVAL_SHELL

else:
    for i, group in enumerate(arm_groups(ARM_LIST, CFG["evaluate"]["arms_per_job"])):

        rule:
            name:
                f"evaluate_arms_{i}"
            input:
                unpack(eval_inputs),
                models=[ARM_MODEL.format(arm=a.id) for a in group],
            output:
                jsons=[ARM_EVAL_JSON.replace("{arm}", a.id) for a in group],
            params:
                arms=" ".join(a.id for a in group),
                features=lambda w: f"{DATA}/features/{eval_split(w.benchmark)}",
                **ARM_EVAL,
            threads: 1
            log:
                f"{LOGS}/evaluate_arms/{i}-{{benchmark}}.log",
            shell:
                ARM_EVAL_SHELL


rule collect:
    input:
        evals=expand(ARM_EVAL_JSON, arm=ARMS, benchmark=BENCHMARKS),
    output:
        arms=report(f"{RESULTS}/tables/arms.csv", caption="../report/arms.rst", category="Tables"),
        design=f"{RESULTS}/tables/design.csv",
    params:
        code=code_version("collect"),
        studies=dumps(CFG["studies"]),
    log:
        f"{LOGS}/collect.log",
    shell:
        "visctx collect --evals {input.evals} --studies {params.studies:q}"
        " --out-arms {output.arms} --out-design {output.design} > {log} 2>&1"


rule train_all:
    input:
        rules.collect.output,


# Needle in a haystack on the frame study's sampling arms (synthetic corpus: the needle frame of
# every video is known from its scene spec).
NIAH_ARMS = list(dict.fromkeys(p.arm.id for p in POINTS if p.study == "frames" and p.method == "sample"))
NIAH = SYNTHETIC and bool(NIAH_ARMS)

if NIAH:

    rule niah:
        input:
            models=[ARM_MODEL.format(arm=a) for a in NIAH_ARMS],
            eval=corpus_json("eval"),
            videos=rules.synth_corpus.output.videos,
            features=feature_shards("eval"),
            quarantine=quarantine_json("eval"),
        output:
            csv=f"{RESULTS}/niah/niah.csv",
            png=report(f"{RESULTS}/niah/niah_heatmap.png", caption="../report/niah.rst", category="Figures"),
        params:
            code=code_version("niah", "model", "context", "data", "video"),
            arms=" ".join(NIAH_ARMS),
            fps=CFG["data"]["extract"]["fps"],
            batch_size=CFG["evaluate"]["batch_size"],
        threads: 1
        log:
            f"{LOGS}/niah.log",
        shell:
            "visctx niah --arms {params.arms} --arms-dir {RESULTS}/arms --eval-json {input.eval}"
            " --videos-json {input.videos} --features-dir {DATA}/features/eval --extract-fps {params.fps}"
            " --batch-size {params.batch_size} --threads {threads} --out-csv {output.csv} --out-png {output.png}"
            " > {log} 2>&1"


rule niah_all:
    input:
        rules.niah.output if NIAH else [],
