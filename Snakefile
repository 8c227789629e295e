# The study as a DAG: videos -> frames -> features -> base -> arms -> evaluations -> fits, tables,
# figures. Rules are thin calls of `visctx <command>`; everything they know comes from the params
# (config/config.yaml under params.yaml: visctx.config.raw_params).
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"  # every setting, documented


configfile: "params.yaml"  # the experiment's knobs and overrides (what dvc exp run -S sets), over it


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/lmms.smk"


rule all:
    default_target: True
    input:
        rules.analysis_all.input,
        rules.niah_all.input,
        rules.lmms_all.input,
