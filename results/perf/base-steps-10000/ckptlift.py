"""Search lift at ARM on TASK of each Lightning checkpoint, loaded into a VideoModel skeleton."""
import json, sys, re
from pathlib import Path
import torch
from visctx.attention import answer_attention, strongest, summarise
from visctx.config import Arm, load_params
from visctx.data import EvalRecord
from visctx.evaluate import _open
from visctx.model import VideoModel
from visctx.synth import load_videos_json

root = Path(sys.argv[1]); arm = Arm.from_id(sys.argv[2]); task = sys.argv[3]; skeleton = sys.argv[4]
cfg = load_params(root / "params.yaml"); res = root / cfg["results"]; ex = cfg["data"]["extract"]
specs = {v["video"]: v for v in load_videos_json(res / "data/corpus/videos.json")["videos"]}
items, store = _open(str(res / "data/corpus/eval.json"), str(res / "data/features/eval"))
recs = [EvalRecord(it.id, it.video, it.question, it.options, it.answer, it.task_type) for it in items if it.task_type == task]
m = VideoModel.load(skeleton)
for c in sys.argv[5:]:
    sd = torch.load(c, map_location="cpu", weights_only=False)["state_dict"]
    sd = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert not unexpected and not [k for k in missing if "rotary" not in k and "inv_freq" not in k], (missing, unexpected)
    layers = summarise(answer_attention(m, recs, store, arm, specs, task, ex["fps"], ex["max_frames"], 32))
    step = int(re.search(r"step=(\d+)", c).group(1))
    print(json.dumps({"ckpt": c, "step": step, "lift": [round(l["lift"], 2) for l in layers],
                      "hit": [round(l["hit"], 2) for l in layers], "best": round(strongest(layers)["lift"], 2)}), flush=True)
