# One shared base trained on a mixture of every arm's setting, then one fine-tune per arm.
# (With train.base.steps = 0 every arm starts from the pretrained LLM directly, as in the paper.)

TRAIN = CFG["train"]
BASE = TRAIN["base"]["steps"] > 0


def train_inputs(wildcards=None):
    return {
        "train": corpus_json("train"),
        "features": feature_shards("train"),
        "llm": rules.init_llm.output if TINY else [],
    }


rule train_base:
    input:
        unpack(train_inputs),
    output:
        model=directory(f"{RESULTS}/base/model"),
    params:
        code=code_version("train", "model", "data", "context", "pretrained", "strategy"),
        optim=cli_options(TRAIN["base"]),
        scale=cli_options(TRAIN["scale"]),
        init=pretrained_llm(),
        arms=" ".join(ARMS),
        seed=CFG["seed"],
        prompt=dumps(CFG["model"]["prompt"]),
        logs=f"{RESULTS}/base/logs",
    threads: 2
    log:
        f"{RESULTS}/base/train.log",
    shell:
        "visctx train --out-dir {output.model} --train-json {input.train} --features-dir {DATA}/features/train"
        " --init {params.init} --arms {params.arms} {params.optim} {params.scale} --seed {params.seed}"
        " --threads {threads}"
        " --prompt-format {params.prompt:q}"
        " --log-dir {params.logs} --no-progress-bar > {log} 2>&1"


# Each arm is fine-tuned from the base with the same budget. `train.arms_per_job: 1` gives one job
# per arm (the cluster's shape: profiles/slurm sets train_arm's GPUs); more arms per job share one
# process's start-up (~10 s of imports, more than a tiny arm's fine-tune on CPU), in jobs balanced
# by sequence length.
ARM_TRAIN = dict(
    code=code_version("train", "model", "data", "context", "pretrained", "strategy"),
    optim=cli_options(TRAIN["arm"]),
    scale=cli_options(TRAIN["scale"]),
    init=f"{RESULTS}/base/model" if BASE else pretrained_llm(),
    seed=CFG["seed"],
    prompt=dumps(CFG["model"]["prompt"]),
)
ARM_TRAIN_SHELL = (
    "visctx train-arms --arms {params.arms} --arms-dir {RESULTS}/arms --train-json {input.train}"
    " --features-dir {DATA}/features/train --init {params.init} {params.optim} {params.scale} --seed {params.seed}"
    " --threads {threads} --prompt-format {params.prompt:q} --no-progress-bar > {log} 2>&1"
)

if TRAIN["arms_per_job"] == 1:

    rule train_arm:
        input:
            unpack(train_inputs),
            base=rules.train_base.output.model if BASE else [],
        output:
            model=directory(ARM_MODEL),
        params:
            arms="{arm}",
            **ARM_TRAIN,
        threads: TRAIN["threads"]
        log:
            f"{RESULTS}/arms/{{arm}}/train.log",
        shell:
            ARM_TRAIN_SHELL

else:
    for i, group in enumerate(arm_groups(ARM_LIST, TRAIN["arms_per_job"])):

        rule:
            name:
                f"train_arms_{i}"
            input:
                unpack(train_inputs),
                base=rules.train_base.output.model if BASE else [],
            output:
                models=[directory(ARM_MODEL.format(arm=a.id)) for a in group],
            params:
                arms=" ".join(a.id for a in group),
                **ARM_TRAIN,
            threads: TRAIN["threads"]
            log:
                f"{LOGS}/train_arms/{i}.log",
            shell:
                ARM_TRAIN_SHELL


# A DeepSpeed run checkpoints into directories of ZeRO shards (<arm>/train/*.ckpt/); this collates
# one into a model dir that evaluation reads, e.g. to evaluate a preempted run's last step:
#   snakemake results/arms/<arm>/collated/last
rule collate_checkpoint:
    input:
        ckpt=f"{RESULTS}/arms/{{arm}}/train/{{ckpt}}.ckpt",
    output:
        model=directory(f"{RESULTS}/arms/{{arm}}/collated/{{ckpt}}"),
    wildcard_constraints:
        arm="[^/]+",
        ckpt="[^/]+",
    params:
        code=code_version("strategy", "model", "pretrained"),
        init=ARM_TRAIN["init"],
        prompt=ARM_TRAIN["prompt"],
    log:
        f"{RESULTS}/arms/{{arm}}/collated/{{ckpt}}.log",
    shell:
        "visctx collate --ckpt-dir {input.ckpt} --out-dir {output.model} --init {params.init}"
        " --prompt-format {params.prompt:q} > {log} 2>&1"
