# One shared base trained on a mixture of every arm's setting, then one fine-tune per arm.
# (With train.base.steps = 0 every arm starts from the pretrained LLM directly, as in the paper.)

TRAIN = CFG["train"]
BASE = TRAIN["base"]["steps"] > 0


def train_inputs(wildcards=None):
    return {
        "train": corpus_json("train"),
        "visual": visual_shards("train"),
        "quarantine": quarantine_json("train"),
        "llm": rules.init_llm.output if TINY else [],
        "tower": rules.init_vision_tower.output if TINY and VISION_FORWARD else [],
    }


rule train_base:
    input:
        unpack(train_inputs),
    output:
        model=directory(f"{BASE_DIR}/model"),
    params:
        code=code_version("train"),
        optim=cli_options({k: v for k, v in TRAIN["base"].items() if k != "arms"}),
        scale=cli_options(TRAIN["scale"]),
        init=pretrained_llm(),
        vision=vision_options(),
        visual=visual_dir("train"),
        arms=" ".join(a.id for a in base_arms(CFG)),
        prompt=lambda w: dumps(CFG["model"]["prompt"]),  # a function: "frame {i}:" is no wildcard
        logs=f"{BASE_DIR}/train",  # as an arm's: <run>/train/{metrics.csv,*.ckpt}
        threads=TRAIN["threads"],  # pinned: not scaled down with --cores, so the bits stay the same
    threads: TRAIN["threads"]
    # Bases first: each is a replicate's critical path (four fifths of the default study's compute), and
    # Snakemake's scheduler otherwise ranks ready jobs by priority and cores only, not length: the fresh
    # clone of abdc266 ran ready fine-tunes first and left the last base to train alone at the end with
    # the other core idle. Order only: no job's command or bytes change.
    priority: 10
    log:
        f"{BASE_DIR}/train.log",
    shell:
        "visctx train --out-dir {output.model} --train-json {input.train} --features-dir {params.visual}"
        " --init {params.init} {params.vision} --arms {params.arms} {params.optim} {params.scale} --seed {wildcards.seed}"
        " --threads {params.threads}"
        " --prompt-format {params.prompt:q}"
        " --log-dir {params.logs} --no-progress-bar > {log} 2>&1"


# Each arm is fine-tuned from its replicate's base, one job per (arm, seed): a change to one arm
# retrains that arm only. Its length is train.arm's rule (visctx.budget: the same for every arm, or
# growing with the visual tokens the text attends to). On a laptop the preload server (workflow.preload) spares
# each job the ~7 s of imports that used to dominate a tiny arm; on a cluster profiles/slurm sets the GPUs.
rule train_arm:
    input:
        unpack(train_inputs),
        base=rules.train_base.output.model if BASE else [],
    output:
        model=directory(ARM_MODEL),
    params:
        code=code_version("train"),
        optim=lambda w: cli_options(arm_options(w.arm, TRAIN["arm"])),
        scale=cli_options(TRAIN["scale"]),
        init=lambda w: f"{RESULTS}/base/seed{w.seed}/model" if BASE else pretrained_llm(),
        vision=vision_options(),  # a fresh model's tower; a base brings its own (its trainable flag is reset)
        visual=visual_dir("train"),
        prompt=lambda w: dumps(CFG["model"]["prompt"]),  # a function: "frame {i}:" is no wildcard
        threads=TRAIN["threads"],
    threads: TRAIN["threads"]
    log:
        f"{ARMS_DIR}/{{arm}}/train.log",
    shell:
        "visctx train-arms --arms {wildcards.arm} --arms-dir {RESULTS}/arms/seed{wildcards.seed} --train-json {input.train}"
        " --features-dir {params.visual} --init {params.init} {params.vision} {params.optim} {params.scale}"
        " --seed {wildcards.seed}"
        " --threads {params.threads} --prompt-format {params.prompt:q} --no-progress-bar > {log} 2>&1"


# A DeepSpeed run checkpoints into directories of ZeRO shards (<arm>/train/*.ckpt/); this collates
# one into a model dir that evaluation reads, e.g. to evaluate a preempted run's last step:
#   snakemake results/arms/seed<seed>/<arm>/collated/last
rule collate_checkpoint:
    input:
        ckpt=f"{ARMS_DIR}/{{arm}}/train/{{ckpt}}.ckpt",
    output:
        model=directory(f"{ARMS_DIR}/{{arm}}/collated/{{ckpt}}"),
    wildcard_constraints:
        arm="[^/]+",
        ckpt="[^/]+",
    params:
        code=code_version("collate"),
        init=rules.train_arm.params.init,
        prompt=rules.train_arm.params.prompt,
        vision=f"--vision-tower {vision_tower()} --vision-layer {CFG['model']['vision_layer']}" if VISION_FORWARD else "",
    log:
        f"{ARMS_DIR}/{{arm}}/collated/{{ckpt}}.log",
    shell:
        "visctx collate --ckpt-dir {input.ckpt} --out-dir {output.model} --init {params.init}"
        " --prompt-format {params.prompt:q} {params.vision} > {log} 2>&1"
