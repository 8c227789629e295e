# lmms-eval on every arm (visctx.lmms, the lmms extra): one job per arm x task of
# evaluate.lmms_tasks (default: none, and then nothing here runs), gathered into
# results/tables/lmms_eval.{md,csv} beside the project's own score of the same benchmark.
# Local tasks are read from workflow/lmms_tasks (visctx_synthetic[_gen]: the held-out synthetic
# split); any other name is one of lmms-eval's own tasks, whose data lmms-eval fetches itself.
import re

LMMS_TASKS = CFG["evaluate"].get("lmms_tasks", [])
LMMS_TASK_DIR = "workflow/lmms_tasks"
LMMS_JSON = f"{ARMS_DIR}/{{arm}}/lmms/{{task}}.json"


def lmms_inputs(wildcards):
    """The local synthetic tasks read the held-out corpus and its videos (paths in their YAML)."""
    if wildcards.task.startswith("visctx_synthetic"):
        if not SYNTHETIC:
            raise ValueError(f"evaluate.lmms_tasks: {wildcards.task} is the synthetic split's task (data.source: synthetic)")
        return {"eval": corpus_json("eval"),
                "videos": expand(rules.render_videos.output.manifest, split="eval", shard=shards("eval"))}
    return {}


def lmms_decoding():
    """Frames decoded as extraction decodes them; a cache-trained arm's frames encoded by the cache's tower."""
    x = CFG["data"]["extract"]
    tower = "" if VISION_FORWARD else f"--vision-tower {vision_tower()} --vision-layer {CFG['model']['vision_layer']}"
    return f"--fps {x['fps']} --max-frames {x['max_frames']} --size {x['size']} {tower}"


if LMMS_TASKS:

    rule lmms_eval_arm:
        input:
            unpack(lmms_inputs),
            model=rules.train_arm.output.model,
            tower=rules.init_vision_tower.output if TINY and not VISION_FORWARD else [],
        output:
            json=LMMS_JSON,
        params:
            code=code_version("lmms_jobs"),
            decoding=lmms_decoding(),
            batch_size=CFG["evaluate"]["batch_size"],
        wildcard_constraints:
            task="|".join(map(re.escape, LMMS_TASKS)),
        threads: 1
        log:
            f"{ARMS_DIR}/{{arm}}/lmms/{{task}}.log",
        shell:
            "visctx lmms-eval-arm --model-dir {input.model} --task {wildcards.task} --include-path {LMMS_TASK_DIR}"
            " --batch-size {params.batch_size} {params.decoding} --threads {threads} --out-json {output.json}"
            " > {log} 2>&1"

    rule lmms_table:
        input:
            jsons=expand(LMMS_JSON, arm=ARMS, seed=SEEDS, task=LMMS_TASKS),
            evals=expand(rules.evaluate_arm.output.json, arm=ARMS, seed=SEEDS, benchmark=BENCHMARKS),
        output:
            md=f"{RESULTS}/tables/lmms_eval.md",
            csv=f"{RESULTS}/tables/lmms_eval.csv",
        params:
            code=code_version("lmms_jobs"),
        log:
            f"{LOGS}/lmms_table.log",
        shell:
            "visctx lmms-table --jsons {input.jsons} --evals {input.evals} --out-md {output.md}"
            " --out-csv {output.csv} > {log} 2>&1"


rule lmms_all:
    input:
        rules.lmms_table.output if LMMS_TASKS else [],
