# One job per (arm, benchmark): adding a benchmark never retrains anything.


rule evaluate_arm:
    input:
        model=rules.train_arm.output.model,
        eval=corpus_json("eval"),
        features=feature_shards("eval"),
    output:
        json=f"{RESULTS}/arms/{{arm}}/eval/{{benchmark}}.json",
    params:
        code=code_version("evaluate", "model", "data", "context"),
        batch_size=CFG["evaluate"]["batch_size"],
    threads: 1
    log:
        f"{RESULTS}/arms/{{arm}}/eval/{{benchmark}}.log",
    shell:
        "visctx evaluate --model-dir {input.model} --eval-json {input.eval} --features-dir {DATA}/features/eval"
        " --arm {wildcards.arm} --benchmark {wildcards.benchmark} --batch-size {params.batch_size}"
        " --threads {threads} --out-json {output.json} > {log} 2>&1"


rule collect:
    input:
        evals=expand(rules.evaluate_arm.output.json, arm=ARMS, benchmark=BENCHMARKS),
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
