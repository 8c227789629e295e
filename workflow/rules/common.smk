import os
import sys
from pathlib import Path

from visctx.budget import arm_options
from visctx.cli import option_args
from visctx.config import TOKEN_OPS, ParamsError, base_arms, dumps, resolve_preset, study_points, unique_arms, validate
from visctx.fresh import install as fresh_install
from visctx.imports import digest as import_digest

# Params are validated before any job starts; a bad value names the key, value and what is allowed.
try:
    CFG = validate(resolve_preset(config))
except ParamsError as e:
    sys.exit(f"config/config.yaml + params.yaml (after preset {config.get('preset')!r} and --config overrides) "
             f"is invalid:\n{e}")

RESULTS = CFG["results"]  # each preset its own root (presets.paper: results-paper)

# Freshness by content (visctx.fresh): outputs are dated by what they were made from before the DAG
# is built, and every finished job is stamped, so a DVC experiment's temporary workspace, a fresh
# clone or a byte-identical restore reruns only what changed by content, params or code.
fresh_install(workflow, RESULTS)

# Jobs run in children of one warm process instead of each importing torch anew (visctx.preload).
if CFG["workflow"]["preload"]:
    os.environ.setdefault("VISCTX_PRELOAD", "1")

DATA = f"{RESULTS}/data"
LOGS = f"{RESULTS}/logs"
BENCHMARKS = CFG["evaluate"]["benchmarks"]
REAL_BENCHMARKS = [b for b in BENCHMARKS if b != "synthetic"]  # each is its own split of videos
SPLITS = ("train", "eval", *REAL_BENCHMARKS)
SYNTHETIC = CFG["data"]["source"] == "synthetic"
TINY = CFG["model"]["source"] == "tiny"

POINTS = study_points(CFG["studies"])
ARM_LIST = unique_arms(POINTS)
ARMS = [arm.id for arm in ARM_LIST]
# Training replicates: each seed is an independent draw of the base and of every arm's fine-tune
# (the data and the initial LLM stay fixed: params `seed`).
SEEDS = CFG["seeds"]
ARMS_DIR = f"{RESULTS}/arms/seed{{seed}}"  # the library's layout: <arms_dir>/<arm>/{model,train,eval}
ARM_MODEL = f"{ARMS_DIR}/{{arm}}/model"
ARM_EVAL_JSON = f"{ARMS_DIR}/{{arm}}/eval/{{benchmark}}.json"
BASE_DIR = f"{RESULTS}/base/seed{{seed}}"


wildcard_constraints:
    split="|".join(SPLITS),
    shard=r"\d{3}",
    seed=r"\d+",
    arm=rf"T\d+-M\d+-({'|'.join(TOKEN_OPS)})(-from\d+)?(-vst\d+w\d+)?",  # Arm.id
    benchmark="|".join(BENCHMARKS),


def n_shards(split):
    return CFG["benchmarks"][split]["shards"] if split in REAL_BENCHMARKS else CFG["data"]["shards"][split]


def shards(split):
    return [f"{i:03d}" for i in range(n_shards(split))]


def eval_split(benchmark):
    """The split of videos a benchmark is asked on: the held-out corpus, or the benchmark's own."""
    return "eval" if benchmark == "synthetic" else benchmark


def corpus_json(split):
    """The instruction (train) or multiple-choice (eval, benchmarks) JSON of a split."""
    if split in REAL_BENCHMARKS:
        return f"{DATA}/benchmarks/{split}.json"  # converted from the published format
    if SYNTHETIC:
        return f"{DATA}/corpus/{split}.json"
    return CFG["data"]["instruct"][f"{split}_json"]


def video_root(split="train"):
    if split in REAL_BENCHMARKS:
        return CFG["benchmarks"][split]["video_root"]
    return f"{DATA}/videos" if SYNTHETIC else CFG["data"]["instruct"]["video_root"]


# model.vision_features: cache -> every frame encoded once (rule encode_features), arms read the
# patch grids; forward -> arms read the decoded frames and the model's own tower encodes them.
VISION_FORWARD = CFG["model"]["vision_features"] == "forward"


def visual_dir(split):
    """Where a split's visual inputs are: the feature cache, or the frames (model.vision_features)."""
    return f"{DATA}/{'frames' if VISION_FORWARD else 'features'}/{split}"


def visual_shards(split):
    return expand(f"{visual_dir(split)}/shard-{{shard}}.npy", shard=shards(split))


def quarantine_json(split):
    """The split's quarantine report: an input of whatever reads its features, so that nothing
    trains or evaluates on a split that lost too many videos (see rule quarantine_split)."""
    return f"{DATA}/quarantine/{split}.json"


def vision_tower():
    return f"{RESULTS}/models/pretrained/vision" if TINY else CFG["model"]["vision_tower"]


def vision_options():
    """The tower a fresh model runs in its forward (model.vision_features: forward), else nothing."""
    if not VISION_FORWARD:
        return ""
    m = CFG["model"]
    return f"--vision-tower {vision_tower()} --vision-layer {m['vision_layer']} " + cli_options(
        {"vision_trainable": m["vision_trainable"]})


def pretrained_llm():
    return f"{RESULTS}/models/pretrained/llm" if TINY else CFG["model"]["llm"]


def cli_options(options):
    """{'hidden_size': 32, 'flag': False} -> '--hidden-size 32 --no-flag' for a thin `visctx` call."""
    return " ".join(option_args(options))


def code_version(*modules):
    """Digest of the library modules a rule's command runs and of everything they import, read from
    the import graph (visctx.imports): a code change reruns exactly the jobs it affects."""
    return import_digest(*modules, src=SRC)


SRC = Path(workflow.basedir) / "src" / "visctx"
