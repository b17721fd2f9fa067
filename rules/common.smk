# Helpers shared by all rules: config validation, paths, wildcard constraints, resources.
# Paths come from the functions here, never from string concatenation in rules.

import hashlib
import json
import os
import re
import sys
from pathlib import Path

import yaml
from snakemake.utils import min_version, validate

min_version("9.0")

# scripts import the library from src/ whether or not it is pip-installed (conda envs, cluster nodes)
_pythonpath = [str(Path(workflow.basedir) / "src"), *filter(None, [os.getenv("PYTHONPATH")])]
os.environ.update(PYTHONPATH=os.pathsep.join(_pythonpath))
sys.path.insert(0, _pythonpath[0])  # the Snakefile itself parses expert-set names with the library

from tsmflow import layout  # noqa: E402
from tsmflow.config import extend  # noqa: E402

if config.get("extends"):  # config/backbones/*.yaml: the default config with a paper model as its backbone
    _given = dict(config)
    # `extends` is relative to the config file that says it
    _file = next(f for f in workflow.config_settings.configfiles if "extends" in (yaml.safe_load(open(f)) or {}))
    config.clear()
    config.update(extend(_given, _file))
validate(config, schema="../config/schema.yaml")
if abs(sum(config["data"]["n_objects_p"]) - 1) > 1e-6:
    raise ValueError("config key data.n_objects_p must sum to 1, got " f"{config['data']['n_objects_p']}")

from tsmflow.data.adapters import check_coco_paths, check_image_text_paths, check_t2i_compbench_paths  # noqa: E402
from tsmflow.data.classes import CLASS_ARCHS, WORLD as CLASS_WORLD  # noqa: E402
from tsmflow.families import backbone_spec  # noqa: E402
from tsmflow.expert_sets import ExpertSet, run_expert_sets  # noqa: E402
from tsmflow.methods import method_of  # noqa: E402
from tsmflow.students import ROUTED, student_sampling  # noqa: E402

RESULTS = layout.RESULTS
SPLITS = ["train", "reference"]  # each also as classes_<split> (the class-conditional world, config `classes`)
BACKBONES = list(config["backbones"])
# a backbone with a `family` is a paper model (config/backbones/*.yaml), loaded from its diffusers pipeline; the
# others are the miniature's, which the workflow trains (its foundation: world, VAE, text encoder, evaluator)
REAL_BACKBONES = [b for b in BACKBONES if "family" in config["backbones"][b]]
MINI_BACKBONES = [b for b in BACKBONES if b not in REAL_BACKBONES]
# the class-conditional backbones train and are evaluated on the classes splits; the foundation's summary, curves
# and sample grids (CompBench-mini prompts) are the miniature's text-to-image backbones'
CLASS_BACKBONES = [b for b in MINI_BACKBONES if b in CLASS_ARCHS]
TEXT_BACKBONES = [b for b in MINI_BACKBONES if b not in CLASS_ARCHS]
if CLASS_BACKBONES and "classes" not in config:
    raise ValueError(f"config key classes: backbones {CLASS_BACKBONES} are class-conditional and need the classes "
                     "splits (classes.train, classes.reference)")
if REAL_BACKBONES and "coco" not in config:
    raise ValueError(f"config key coco: the paper models {REAL_BACKBONES} are evaluated by FID on COCO2014 val, "
                     "which needs coco.annotations and coco.images")
if REAL_BACKBONES and config["evaluation"]["fid"]["feature_space"] != "inception":
    raise ValueError("config key evaluation.fid.feature_space: the paper models' FID is on Inception features "
                     f"(inception), not {config['evaluation']['fid']['feature_space']}")
# every name a backbone may have; a declaration (run, DeMe set, fine-tuning, student) on one the config leaves out is
# not built, so the default declares the papers' models' runs and tables once, for their configs to build
with open(Path(workflow.basedir) / "config/schema.yaml") as _f:
    KNOWN_BACKBONES = list(yaml.safe_load(_f)["properties"]["backbones"]["properties"])


def on_backbone(backbone, where):
    """Whether a declaration on `backbone` is built: the config has that backbone."""
    if backbone not in KNOWN_BACKBONES:
        raise ValueError(f"config key {where}: backbone {backbone!r} is not one of {KNOWN_BACKBONES}")
    return backbone in BACKBONES


CATEGORIES = ["color", "shape", "texture", "spatial", "non_spatial", "complex"]


DECLARED_RUNS = config["runs"]
RUNS = {r: d for r, d in DECLARED_RUNS.items() if on_backbone(d["backbone"], f"runs.{r}.backbone")}


def _built(block):
    """The declarations of config `block` (name -> {backbone, ...}) on backbones the config has."""
    return {k: d for k, d in (config.get(block) or {}).items() if on_backbone(d["backbone"], f"{block}.{k}.backbone")}


def _built_rows(table, decl):
    """A table's rows whose runs are built; a row mixing built and unbuilt runs is an error."""
    rows = []
    for row in decl["rows"]:
        runs = row.get("runs") or [row["run"]]
        for r in runs:
            if r not in DECLARED_RUNS:
                raise ValueError(f"config key tables.{table}.rows: run {r!r} is not declared under runs")
        if all(r in RUNS for r in runs):
            rows.append(row)
        elif any(r in RUNS for r in runs):
            raise ValueError(f"config key tables.{table}.rows: the runs {runs} of one row are on backbones the "
                             "config has and does not have")
    return rows


TABLES = {t: {**d, "rows": _built_rows(t, d)} for t, d in config["tables"].items()}
TABLES = {t: d for t, d in TABLES.items() if d["rows"]}  # a table of left-out backbones only is not built
CLAIMS = {}
for _claim, _decl in (config.get("claims") or {}).items():
    _runs = [r for _side in ("ours", "baseline") for r in _decl[_side]["runs"]]
    for _r in _runs:
        if _r not in DECLARED_RUNS:
            raise ValueError(f"config key claims.{_claim}: run {_r!r} is not declared under runs")
    if all(r in RUNS for r in _runs):
        CLAIMS[_claim] = _decl
DEME_SETS = _built("deme_sets")  # DeMe: N range models of one backbone, merged by a search
FINETUNES = _built("finetunes")  # further training: full fine-tuning, prompt tuning, DMP
STUDENTS = _built("students")  # distilled few-step students (DMD2, WaDi)
for _block, _decls in {"deme_sets": DEME_SETS, "finetunes": FINETUNES}.items():
    for _name, _d in _decls.items():  # a paper model further trains on its own post-pretraining data
        if _d["backbone"] in REAL_BACKBONES and (_d["task"] != "post" or _d.get("method") == "scratch"):
            raise ValueError(f"config key {_block}.{_name}: on a paper model ({_d['backbone']}), {_block} further "
                             "train the pre-trained denoiser on its post-pretraining data (task post, not scratch)")
        if _d["backbone"] in REAL_BACKBONES and "data" not in config["backbones"][_d["backbone"]]:
            raise ValueError(f"config key backbones.{_d['backbone']}.data: {_block}.{_name} trains on the "
                             "backbone's post-pretraining data, which is not set")
TASKS = ["gors", "post"]  # domain adaptation on GORS prompt images | post-pretraining on the pre-training data
EXPERT_SET = r"[a-z0-9]+-[a-z0-9]+-n\d+-r\d+-s\d+(?:-seed\d+)?"


def check_expert_set(name, where):
    es = ExpertSet.parse(name)
    if es.backbone not in BACKBONES or es.task not in TASKS:
        raise ValueError(f"config key {where}: expert set {name!r} needs a backbone in {BACKBONES} "
                         f"and a task in {TASKS}")
    if es.backbone in REAL_BACKBONES and es.task == "gors" and "t2i_compbench" not in config:
        raise ValueError(f"config key t2i_compbench: expert set {name!r} trains on GORS images of T2I-CompBench's "
                         "training prompts, whose folder and scorers this key names")
    if es.backbone in REAL_BACKBONES and es.task == "post" and "data" not in config["backbones"][es.backbone]:
        raise ValueError(f"config key backbones.{es.backbone}.data: expert set {name!r} trains on the backbone's "
                         "post-pretraining data, which is not set")
    return es


for _run, _spec in RUNS.items():
    if _spec["backbone"] not in BACKBONES:
        raise ValueError(f"config key runs.{_run}.backbone: {_spec['backbone']!r} is not in backbones")
    for _name in run_expert_sets(_spec):
        if check_expert_set(_name, f"runs.{_run}").backbone != _spec["backbone"]:
            raise ValueError(f"config key runs.{_run}: expert set {_name!r} is not on backbone {_spec['backbone']!r}")
DECLARED = {"finetunes": FINETUNES, "deme_sets": DEME_SETS, "students": STUDENTS}  # what a run's `ref` names
for _run, _spec in RUNS.items():
    _ref = method_of(_spec, f"runs.{_run}").ref
    if _ref and _spec.get(_ref[0]) not in DECLARED[_ref[1]]:
        raise ValueError(f"config key runs.{_run}.{_ref[0]}: {_spec.get(_ref[0])!r} is not declared under {_ref[1]}")
    if _ref and DECLARED[_ref[1]][_spec[_ref[0]]]["backbone"] != _spec["backbone"]:
        raise ValueError(f"config key runs.{_run}: {_spec[_ref[0]]!r} is not on backbone {_spec['backbone']!r}")
    if _spec.get("step") and (not _ref or _ref[1] not in ("finetunes", "students") or _spec["step"] not in
                              DECLARED[_ref[1]][_spec[_ref[0]]].get("snapshots", [])):
        _job = f"{_ref[1]}.{_spec[_ref[0]]}" if _ref else "a finetune or student"
        raise ValueError(f"config key runs.{_run}.step: {_spec['step']} is not one of the snapshots of {_job}")
for _name, _d in {**DEME_SETS, **FINETUNES}.items():
    if _d["backbone"] not in BACKBONES or _d["task"] not in TASKS:
        raise ValueError(f"config: {_name!r} needs a backbone in {BACKBONES} and a task in {TASKS}")
for _name, _d in FINETUNES.items():
    if _d["method"] == "scratch" and "scratch" not in config["finetune"]:
        raise ValueError(f"config key finetune.scratch: finetunes.{_name} trains from scratch, which needs its "
                         "defaults (train: batch_size, lr, ...)")
    if "with_dmp" in _d and _d["method"] != "scratch":
        raise ValueError(f"config key finetunes.{_name}.with_dmp: for method scratch only (method dmp is DMP)")
for _run, _spec in RUNS.items():
    if _spec["backbone"] in CLASS_BACKBONES and (_spec["method"] not in ("base", "finetune")
                                                 or "compbench" in _spec.get("evaluate", ["compbench"])):
        raise ValueError(f"config key runs.{_run}: the class-conditional {_spec['backbone']} has base and finetune "
                         "runs only, evaluated with `evaluate: [fid]` (CompBench-mini prompts are not classes)")
for _run, _spec in RUNS.items():
    if _spec["backbone"] in REAL_BACKBONES and _spec["method"] == "moe_lora":
        raise ValueError(f"config key runs.{_run}: moe_lora runs on the miniature only")
    if _spec["backbone"] in REAL_BACKBONES and "compbench" in _spec.get("evaluate", ["compbench"]) \
            and "t2i_compbench" not in config:
        raise ValueError(f"config key t2i_compbench: run {_run!r} on a paper model is scored on T2I-CompBench, "
                         "whose prompt folder and scorers this key names")
for _name, _d in STUDENTS.items():
    if _d["backbone"] not in BACKBONES:
        raise ValueError(f"config key students.{_name}.backbone: {_d['backbone']!r} is not in backbones")
    if not config.get("distill"):
        raise ValueError(f"config: students.{_name} is declared but the shared `distill` block is missing")
    if _d["backbone"] in REAL_BACKBONES and "data" not in config["backbones"][_d["backbone"]]:
        raise ValueError(f"config key backbones.{_d['backbone']}.data: students.{_name} is distilled on the "
                         "captions of the backbone's post-pretraining data, which is not set")
    if _d["adapter"] not in ("full", "tsm2") and not _d.get("rank"):
        raise ValueError(f"config key students.{_name}: adapter {_d['adapter']!r} needs a rank")
    if (_d["adapter"] == "tsm") != bool(_d.get("experts")):
        raise ValueError(f"config key students.{_name}.experts: the number of TSM experts, for adapter tsm only")
    if (_d["adapter"] == "tsm2") != bool(_d.get("core")):
        raise ValueError(f"config key students.{_name}.core: the tsm student a tsm2 student routes over, "
                         "for adapter tsm2 only")
    if _d["adapter"] == "tsm2":
        for _key, _other, _kinds in [("core", _d["core"], ("tsm",))] + [("context", _c, ("lora", "tsm"))
                                                                        for _c in _d.get("context", [])]:
            _o = STUDENTS.get(_other)
            if not _o or _o["adapter"] not in _kinds or _o["backbone"] != _d["backbone"]:
                raise ValueError(f"config key students.{_name}.{_key}: {_other!r} must be a student of "
                                 f"adapter {' or '.join(_kinds)} on backbone {_d['backbone']!r}")
            if _o["timesteps"] != _d["timesteps"]:
                raise ValueError(f"config key students.{_name}.{_key}: {_other!r} has timesteps {_o['timesteps']}, "
                                 f"not {_d['timesteps']}")
for _table, _decl in TABLES.items():
    for _row in _decl["rows"]:
        for _r in _row.get("runs") or [_row["run"]]:
            if _r not in RUNS:
                raise ValueError(f"config key tables.{_table}.rows: run {_r!r} is not declared under runs")
            if set(CATEGORIES) & set(_decl["columns"]) and "compbench" not in RUNS[_r].get("evaluate", ["compbench"]):
                raise ValueError(f"config key tables.{_table}: run {_r!r} is FID-only (evaluate: [fid]) but the "
                                 "table has CompBench-mini columns")
for _claim, _decl in CLAIMS.items():
    for _side in ("ours", "baseline"):
        for _r in _decl[_side]["runs"]:
            if _r not in RUNS:
                raise ValueError(f"config key claims.{_claim}.{_side}: run {_r!r} is not declared under runs")
            if _decl["metric"] != "fid" and "compbench" not in RUNS[_r].get("evaluate", ["compbench"]):
                raise ValueError(f"config key claims.{_claim}.{_side}: run {_r!r} is FID-only (evaluate: [fid]) but "
                                 f"the claim's metric is {_decl['metric']}")

def get_table_runs(table):
    return list(dict.fromkeys(r for row in TABLES[table]["rows"] for r in (row.get("runs") or [row["run"]])))


# Parts: the tables in groups, each a target of its own that fits one session's run (docs/results/<part>). Every
# table is in one part; a claim goes to the first part whose tables hold all its runs. Without `parts`, one part.
PARTS = {}
for _part, _tables in (config.get("parts") or {"all": list(config["tables"])}).items():
    for _t in _tables:
        if _t not in config["tables"]:
            raise ValueError(f"config key parts.{_part}: table {_t!r} is not declared under tables")
    if any(t in TABLES for t in _tables):  # a part of unbuilt tables only is left out
        PARTS[_part] = [t for t in _tables if t in TABLES]
_part_of = {}
for _part, _tables in PARTS.items():
    for _t in _tables:
        if _t in _part_of:
            raise ValueError(f"config key parts.{_part}: table {_t!r} is already in part {_part_of[_t]!r}")
        _part_of[_t] = _part
_unparted = [t for t in TABLES if t not in _part_of]
if _unparted:
    raise ValueError(f"config key parts: tables {_unparted} are in no part")
PART_CLAIMS = {p: [] for p in PARTS}
_part_runs = {p: {r for t in ts for r in get_table_runs(t)} for p, ts in PARTS.items()}
for _claim, _decl in CLAIMS.items():
    _need = {r for _side in ("ours", "baseline") for r in _decl[_side]["runs"]}
    _home = next((p for p, runs in _part_runs.items() if _need <= runs), None)
    if _home is None:
        raise ValueError(f"config key claims.{_claim}: no part's tables hold all its runs {sorted(_need)}")
    PART_CLAIMS[_home].append(_claim)


_inception = config["evaluation"]["fid"].get("inception_weights")
if _inception and not os.path.isfile(_inception):
    raise ValueError(f"config key evaluation.fid.inception_weights: {_inception} is not a file")
_offline = [b for b in REAL_BACKBONES if config["backbones"][b].get("local_files_only")]
if _offline and not _inception:
    raise ValueError(f"config key evaluation.fid.inception_weights: the offline backbones {_offline} "
                     "(local_files_only: true) need a local copy of clean-fid's Inception weights, "
                     "inception-2015-12-05.pt (clean-fid would download it)")
_clip = config["evaluation"].get("clip") or {}
if _offline and _clip.get("pretrained") and not _clip.get("local_files_only"):
    raise ValueError(f"config key evaluation.clip.local_files_only: the offline backbones {_offline} need the CLIP "
                     f"scorer {_clip['pretrained']!r} from a local directory or the HF cache (local_files_only: true)")


def _uses_t2i_compbench(spec):
    """A paper model's run scored on T2I-CompBench, or trained on GORS images of its prompts."""
    return spec["backbone"] in REAL_BACKBONES and ("compbench" in spec.get("evaluate", ["compbench", "fid"])
                                                   or any(ExpertSet.parse(n).task == "gors"
                                                          for n in run_expert_sets(spec)))


T2I_RUNS = [r for r, s in RUNS.items() if _uses_t2i_compbench(s)]  # what needs config t2i_compbench
_scorers = (config.get("t2i_compbench") or {}).get("scorers", {})
if T2I_RUNS and _offline and not _scorers.get("local_files_only"):
    raise ValueError(f"config key t2i_compbench.scorers.local_files_only: the offline backbones {_offline} need "
                     "T2I-CompBench's scorers from local directories or the HF cache (local_files_only: true)")
# a paper model's data paths are checked as the DAG is built: placeholders fail a dry run, naming the key
for _b in REAL_BACKBONES:
    if "data" in config["backbones"][_b]:
        check_image_text_paths(config["backbones"][_b]["data"], f"backbones.{_b}.data")
if REAL_BACKBONES:
    check_coco_paths(config["coco"])
if T2I_RUNS:
    check_t2i_compbench_paths(config["t2i_compbench"])


wildcard_constraints:
    split="|".join(SPLITS),
    backbone="|".join(BACKBONES),
    run="|".join(RUNS),
    table="|".join(TABLES),
    part="|".join(PARTS),
    feature_space="shapes|patch|inception|inception_patch",
    expert_set=EXPERT_SET,
    interval=r"\d+",
    range=r"\d+",
    deme_set="|".join(map(re.escape, DEME_SETS)) or "no_deme_sets",
    finetune="|".join(map(re.escape, FINETUNES)) or "no_finetunes",
    student="|".join(map(re.escape, STUDENTS)) or "no_students",


def get_split_dir(split):
    return f"{RESULTS}/data/{split}"


def get_compbench_files(backbone=None):
    """The CompBench prompt files: the miniature's CompBench-mini, or for a paper model T2I-CompBench's own."""
    if backbone in REAL_BACKBONES:
        folder = config["t2i_compbench"]["prompts"]
        return {f"{c}_{s}": f"{folder}/{c}_{s}.txt" for c in CATEGORIES for s in ("train", "val")}
    return {f"{c}_{s}": f"{RESULTS}/data/compbench/{c}_{s}.txt" for c in CATEGORIES for s in ("train", "val")}


def get_compbench_prompts(backbone, split):
    return [f for k, f in get_compbench_files(backbone).items() if k.endswith(f"_{split}")]


def get_scorer(backbone):
    """A rule's `scorer` param: how CompBench images of `backbone` are scored. The miniature: its evaluator (an
    input of the job); a paper model: T2I-CompBench's scorers (config t2i_compbench.scorers), with its complex
    prompts' kinds from the prompt folder's complex_{train,val}_{spatial,action}.txt where they exist."""
    if backbone not in REAL_BACKBONES:
        return {"kind": "mini"}
    t2i = config["t2i_compbench"]
    kinds = {f"complex_{k}": [f for s in ("train", "val") for f in [f"{t2i['prompts']}/complex_{s}_{k}.txt"]
                              if os.path.isfile(f)] for k in ("spatial", "action")}
    return {"kind": "t2i_compbench", **t2i["scorers"], **kinds}


def get_resolution(backbone):
    """The images' side: the miniature's config `resolution`, or a paper model's own."""
    return get_backbone_spec(backbone)["resolution"] if backbone in REAL_BACKBONES else config["resolution"]


def _scorer_inputs(backbone):
    """What scoring CompBench images reads: the miniature's evaluator and its validation (none for a paper model:
    its scorers load by model id)."""
    if backbone in REAL_BACKBONES:
        return {}
    return {"evaluator": get_model_dir("evaluator"), "validation": f"{RESULTS}/evaluator/validation.json"}


def get_prompt_images_inputs(wildcards):
    return {**_backbone_inputs(wildcards.backbone), **_scorer_inputs(wildcards.backbone),
            "prompts": get_compbench_prompts(wildcards.backbone, "train")}


def get_model_dir(name):
    return layout.model_dir(name)


def get_base_dir(backbone):
    return layout.base_dir(backbone)


def get_run_path(run, name):
    return layout.run_path(run, name)


def get_prompt_images_dir(backbone):
    return f"{RESULTS}/gors/{backbone}"


def get_world_split(split, backbone):
    """A backbone's split of its world: `split` for text-to-image backbones, `classes_<split>` for class ones."""
    return f"classes_{split}" if backbone in CLASS_BACKBONES else split


def get_task_data(task, backbone):
    """Fine-tuning data of a task: cached latents and the dataset dir whose labels.jsonl has the captions (for a
    class-conditional backbone, its classes split: "post" is further training on its pre-training data)."""
    if task == "post" and backbone in REAL_BACKBONES:
        return get_image_text_data(backbone)
    if task == "gors" and backbone not in CLASS_BACKBONES:
        return {"latents": f"{RESULTS}/gors/{backbone}_latents.safetensors", "data": get_prompt_images_dir(backbone)}
    if task == "post":
        split = get_world_split("train", backbone)
        return {"latents": f"{RESULTS}/data/{split}_latents.safetensors", "data": get_split_dir(split)}
    raise ValueError(f"task {task!r} on backbone {backbone!r}: expected one of {TASKS} (post only for a "
                     "class-conditional backbone)")


def get_image_text_data(backbone):
    """A paper model's post-pretraining data, encoded by its own VAE: latents, and the dir with labels.jsonl."""
    return {"latents": f"{RESULTS}/data/{backbone}_post_latents.safetensors", "data": f"{RESULTS}/data/{backbone}_post"}


def get_expert_dir(expert_set, interval):
    return layout.expert_dir(expert_set, interval)


def get_backbone_spec(backbone):
    """A rule's `backbone` param: what loading the backbone reads (a paper model's pipeline, or the miniature arch)."""
    return backbone_spec(config, backbone)


def get_lora_params(backbone):
    """LoRA settings of a backbone's experts: its own `lora` (a paper model's, TSM Sup. A), else config `lora`."""
    return config["backbones"][backbone].get("lora") or config["lora"]


def get_router_params(backbone):
    return config["backbones"][backbone].get("router") or config["router"]


def get_expert_dirs(expert_set):
    es = check_expert_set(expert_set, "expert set")
    return [get_expert_dir(expert_set, i) for i in range(es.n)]


def _backbone_inputs(backbone):
    """The trained components a miniature backbone loads from (a paper model loads its pipeline: none)."""
    if backbone in REAL_BACKBONES:
        return {}
    inputs = {"model": get_base_dir(backbone), "vae": get_model_dir("vae")}
    if backbone not in CLASS_BACKBONES:  # a class-conditional model reads no text
        inputs["text_encoder"] = get_model_dir("text_encoder")
    return inputs


def get_pretrain_inputs(wildcards):
    """The VAE, the prompt encoder (text backbones) and the backbone's pre-training split with its latents."""
    return {k: v for k, v in {**_backbone_inputs(wildcards.backbone),
                               **get_task_data("post", wildcards.backbone)}.items() if k != "model"}


def get_expert_inputs(wildcards):
    es = check_expert_set(wildcards.expert_set, "expert set")
    if int(wildcards.interval) >= es.n:
        raise ValueError(f"expert set {es.name} has intervals 0..{es.n - 1}, not {wildcards.interval}")
    return {**_backbone_inputs(es.backbone), **get_task_data(es.task, es.backbone)}


def _tsm2_spec(run):
    spec = RUNS[run]
    if spec["method"] != "tsm2":
        raise ValueError(f"run {run!r} is a {spec['method']} run; only tsm2 runs have a router")
    return spec


def get_router_inputs(wildcards):
    spec = _tsm2_spec(wildcards.run)
    task = check_expert_set(run_expert_sets(spec)[0], f"runs.{wildcards.run}").task
    experts = [d for s in run_expert_sets(spec) for d in get_expert_dirs(s)]
    return {**_backbone_inputs(spec["backbone"]), **get_task_data(task, spec["backbone"]), "experts": experts}


def get_moe_inputs(wildcards):
    spec = RUNS[wildcards.run]
    if spec["method"] != "moe_lora":
        raise ValueError(f"run {wildcards.run!r} is not a moe_lora run")
    return {**_backbone_inputs(spec["backbone"]), **get_task_data(spec["task"], spec["backbone"])}


def get_finetune_dir(name):
    return layout.finetune_dir(name)


def get_finetune_inputs(wildcards):
    d = FINETUNES[wildcards.finetune]
    return {**_backbone_inputs(d["backbone"]), **get_task_data(d["task"], d["backbone"])}


def get_scratch_inputs(wildcards):
    """A from-scratch job needs no pre-trained denoiser: the VAE, the text encoder and the task data."""
    return {k: v for k, v in get_finetune_inputs(wildcards).items() if k != "model"}


def get_finetune_model_inputs(wildcards):
    return _backbone_inputs(FINETUNES[wildcards.finetune]["backbone"])


def get_dmp_activation_inputs(wildcards):
    """A DMP job's model and patch, and the prompts its gate is averaged over (a class backbone: its classes)."""
    backbone = FINETUNES[wildcards.finetune]["backbone"]
    inputs = {**get_finetune_model_inputs(wildcards), "dmp": get_finetune_dir(wildcards.finetune)}
    if backbone in REAL_BACKBONES:  # the captions of its post-pretraining data
        inputs["captions"] = get_image_text_data(backbone)["data"]
    elif backbone not in CLASS_BACKBONES:
        inputs["prompts"] = get_compbench_prompts(backbone, "val")
    return inputs


def get_student_dir(name):
    return f"{RESULTS}/students/{name}"


def get_student_inputs(wildcards):
    """The teacher (the backbone's pre-trained denoiser) and the prompts: the pre-training data's captions (a paper
    model's: its post-pretraining data's), with their latents where the student has DMD2's GAN phase; for a TSM
    2-stage student, also the students whose experts it routes over (core and context)."""
    d = STUDENTS[wildcards.student]
    data = get_task_data("post", d["backbone"])
    inputs = {**_backbone_inputs(d["backbone"]), "data": data["data"]}
    if d.get("gan"):
        inputs["latents"] = data["latents"]
    if d["adapter"] == "tsm2":
        inputs.update(core=get_student_dir(d["core"]), context=[get_student_dir(c) for c in d.get("context", [])])
    return inputs


def get_steps_points(table):
    """A `fid_vs_steps` table's rows as its plot reads them: the base row (the pre-trained model), and each
    snapshot or end of a further-training job or distilled student, with its series and step."""
    points = []
    for row in TABLES[table]["rows"]:
        spec = RUNS[row["run"]]
        if spec["method"] == "base":
            points.append({"run": row["run"], "kind": "base", "label": row["label"]})
            continue
        ref = method_of(spec).ref
        if ref is None or ref[1] not in ("finetunes", "students"):
            raise ValueError(f"config key tables.{table}: fid_vs_steps plots base, finetune and distill runs, "
                             f"not run {row['run']!r} ({spec['method']})")
        job = DECLARED[ref[1]][spec[ref[0]]]
        points.append({"run": row["run"], "kind": spec["method"], "series": row.get("series", spec[ref[0]]),
                       "step": spec.get("step") or job["steps"]})
    return points


def get_table_students(table):
    """A table's one-run rows of students merged into one denoiser (what has a weight change): {run: label}."""
    return {r["run"]: r["label"] for r in TABLES[table]["rows"]
            if r.get("run") and RUNS[r["run"]]["method"] == "distill"
            and STUDENTS[RUNS[r["run"]]["student"]]["adapter"] not in ROUTED}


def get_table_student_dirs(wildcards):
    return {run: get_student_dir(RUNS[run]["student"]) for run in get_table_students(wildcards.table)}


def get_deme_range_dir(deme_set, i):
    return layout.deme_range_dir(deme_set, i)


def get_deme_range_dirs(deme_set):
    return [get_deme_range_dir(deme_set, i) for i in range(DEME_SETS[deme_set]["n"])]


def get_deme_merged_dir(deme_set):
    return layout.deme_merged_dir(deme_set)


def get_deme_range_inputs(wildcards):
    d = DEME_SETS[wildcards.deme_set]
    if int(wildcards.range) >= d["n"]:
        raise ValueError(f"deme set {wildcards.deme_set} has ranges 0..{d['n'] - 1}, not {wildcards.range}")
    return {**_backbone_inputs(d["backbone"]), **get_task_data(d["task"], d["backbone"])}


def get_deme_search_inputs(wildcards):
    """The range models, and what the FID objective reads: reference captions and statistics (a paper model's:
    COCO2014 val, Inception features), and the validated evaluator where FID uses its features."""
    b = DEME_SETS[wildcards.deme_set]["backbone"]
    inputs = {**_backbone_inputs(b), "ranges": get_deme_range_dirs(wildcards.deme_set),
              "reference_stats": get_fid_reference(b)}
    if b in REAL_BACKBONES:
        return {**inputs, "reference": get_coco_reference()}
    return {**inputs, "reference": get_split_dir("reference"), "evaluator": get_model_dir("evaluator"),
            "validation": f"{RESULTS}/evaluator/validation.json"}


def get_run_model_inputs(wildcards):
    """What a run's sampler loads: the base denoiser, plus its experts and router, by method."""
    spec = RUNS[wildcards.run]
    inputs = _backbone_inputs(spec["backbone"])
    if spec["method"] == "finetune":
        ft = FINETUNES[spec["finetune"]]
        if ft["method"] != "dmp":  # full, scratch: the job wrote the denoiser itself
            inputs["model"] = get_finetune_dir(spec["finetune"])
        if ft["method"] == "dmp" or ft.get("with_dmp"):  # and its patch beside it (scratch + DMP)
            inputs["dmp"] = get_finetune_dir(spec["finetune"])
    elif spec["method"] == "deme_merged":
        inputs["model"] = get_deme_merged_dir(spec["deme"])
    elif spec["method"] == "deme_ensemble":
        inputs["ranges"] = get_deme_range_dirs(spec["deme"])
    elif spec["method"] == "distill" and STUDENTS[spec["student"]]["adapter"] in ROUTED:
        inputs["student"] = get_student_dir(spec["student"])  # experts and router over the base denoiser
    elif spec["method"] == "distill":
        inputs["model"] = get_student_dir(spec["student"])
    method = method_of(spec)
    if method.experts:
        inputs["experts"] = [d for s in run_expert_sets(spec) for d in get_expert_dirs(s)]
    if method.router:
        inputs["router"] = get_run_path(wildcards.run, method.router)
    return inputs


def get_run_trained_dirs(wildcards):
    """Everything a run trained (expert and router dirs, each with a stats.json): its trainable parameters."""
    spec = RUNS[wildcards.run]
    if spec["method"] == "finetune":
        return [get_finetune_dir(spec["finetune"])]
    if spec["method"] in ("deme_ensemble", "deme_merged"):
        return get_deme_range_dirs(spec["deme"])
    if spec["method"] == "distill":
        return [get_student_dir(spec["student"])]
    inputs = get_run_model_inputs(wildcards)
    return list(inputs.get("experts", [])) + ([inputs["router"]] if "router" in inputs else [])


def run_evaluations(run):
    """What a run is evaluated on: CompBench-mini and FID by default; `evaluate: [fid]` for FID-only tables."""
    return RUNS[run].get("evaluate", ["compbench", "fid"])


def get_sampling_params():
    """What a sampler reads of config `sampling` (the grid keys only shape sample grids)."""
    return {**{k: config["sampling"][k] for k in ("solver", "steps", "guidance_scale")},
            "precision": config["sampling"].get("precision", "fp32")}


def get_backbone_sampling(backbone):
    """A backbone's sampler: config `sampling`, with the backbone's own `sampling` keys over it."""
    return {**get_sampling_params(), **config["backbones"][backbone].get("sampling", {})}


def get_run_sampling(run):
    """A run's sampler: config `sampling`, its backbone's `sampling` keys over it, then the run's own; or a distilled
    student's (its timesteps, no guidance)."""
    spec = RUNS[run]
    if spec["method"] == "distill":
        if spec.get("sampling"):
            raise ValueError(f"config key runs.{run}.sampling: a distilled student samples at its own timesteps")
        return {**student_sampling(STUDENTS[spec["student"]]["timesteps"],
                                   config["backbones"][spec["backbone"]]["num_train_timesteps"]),
                "precision": get_sampling_params()["precision"]}
    return {**get_backbone_sampling(spec["backbone"]), **spec.get("sampling", {})}


def runs_regex(runs):
    return "|".join(map(re.escape, runs)) or "(?!)"


def get_run_eval_inputs(wildcards):
    backbone = RUNS[wildcards.run]["backbone"]
    inputs = {**get_run_model_inputs(wildcards), "trained": get_run_trained_dirs(wildcards),
              "fid_reference": get_fid_reference(backbone)}
    if get_clip_params() == {}:  # CLIP score by the workflow's own CLIP
        inputs["clip"] = get_model_dir("clip_scorer")
    fid = config["evaluation"]["fid"]
    if backbone in REAL_BACKBONES:  # COCO captions and images; Inception features; T2I-CompBench's scorers
        if "compbench" in run_evaluations(wildcards.run):
            inputs["prompts"] = get_compbench_prompts(backbone, "val")
        if fid.get("patch_fid"):  # Patch-FID of the same samples, on Inception
            inputs["patch_reference"] = get_fid_reference(backbone, "inception_patch")
        return {**inputs, "reference": get_coco_reference()}
    inputs.update(reference=get_split_dir(get_world_split("reference", backbone)), evaluator=get_model_dir("evaluator"),
                  validation=f"{RESULTS}/evaluator/validation.json")
    if fid.get("patch_fid") and fid["feature_space"] == "shapes":  # Patch-FID of the same samples
        inputs["patch_reference"] = get_fid_reference(backbone, "patch")
    if "compbench" in run_evaluations(wildcards.run):
        inputs["prompts"] = get_compbench_prompts(backbone, "val")
    return inputs


def get_coco_reference():
    """COCO2014 val (a paper model's FID): the reference images, and the captions its samples answer."""
    return f"{RESULTS}/data/coco_reference"


def get_fid_reference(backbone=None, feature_space=None):
    """FID reference statistics of a backbone's held-out split (the text world's without a backbone; COCO2014 val
    for a paper model)."""
    space = feature_space or config["evaluation"]["fid"]["feature_space"]
    if backbone in REAL_BACKBONES:
        return f"{RESULTS}/data/fid_reference_coco_{space}.npz"
    prefix = "classes_" if backbone in CLASS_BACKBONES else ""
    return f"{RESULTS}/evaluator/fid_reference_{prefix}{space}.npz"


# outside results/ (git-ignored, under DVC) and outside the default target, publishing is a target of its own
# (`make run` asks for it), so results/ stays complete without it
PUBLISHED = "docs/results"


def get_part_claims(part):
    return {c: CLAIMS[c] for c in PART_CLAIMS[part]}


def get_part_claims_metrics(wildcards):
    return claims_metrics(get_part_claims(wildcards.part))


def get_part_inputs(wildcards):
    """What docs/results/<part>/ publishes, by its name there: the part's tables (md, csv), its claims, its plots."""
    tables = PARTS[wildcards.part]
    files = {f"tables/{t}.{ext}": f"{RESULTS}/tables/{t}.{ext}" for t in tables for ext in ("md", "csv")}
    if PART_CLAIMS[wildcards.part]:
        files.update({f"claims.{ext}": f"{RESULTS}/parts/{wildcards.part}/claims.{ext}" for ext in ("md", "csv")})
    plots = [p for p in get_final_outputs() if p.startswith(f"{RESULTS}/plots/")
             and any(os.path.basename(p).startswith(f"{t}_") for t in tables)]
    files.update({f"plots/{os.path.basename(p)}": p for p in plots})
    return files


def get_config_hash():
    """First 12 hex digits of the SHA-256 of the config (keys sorted): names the config a published file came from."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def get_run_command(*targets):
    """The command that builds `targets`, with config files relative to the workflow (the same on every machine)."""
    files = [os.path.relpath(f, workflow.basedir) for f in workflow.config_settings.configfiles]
    return " ".join(["snakemake", *(["--configfile", *files] if files else []), *targets])


def claims_metrics(claims):
    """Each run's metrics.json, for the runs of `claims` (either side)."""
    runs = {r for c in claims.values() for side in ("ours", "baseline") for r in c[side]["runs"]}
    return {run: get_run_path(run, "metrics.json") for run in sorted(runs)}


def get_claims_metrics(wildcards):
    return claims_metrics(CLAIMS)


def get_table_metrics(wildcards):
    """Each run's metrics.json, or the per-run file the table names (`metrics: latent_structure`, DMP Table 5)."""
    name = TABLES[wildcards.table].get("metrics", "metrics")
    return {run: get_run_path(run, f"{name}.json") for run in get_table_runs(wildcards.table)}


def get_latent_structure_runs():
    """Runs of `metrics: latent_structure` tables: their FID sampling keeps its latents (DMP Table 5)."""
    return {r for t, d in TABLES.items() if d.get("metrics") == "latent_structure" for r in get_table_runs(t)}


def get_latent_structure_inputs(wildcards):
    """A run's FID samples (with their latents), and for a DMP run its gate's activation data (DMP Fig. 7)."""
    spec = RUNS[wildcards.run]
    inputs = {"fid_samples": get_run_path(wildcards.run, "fid_samples")}
    ft = FINETUNES.get(spec.get("finetune"), {})
    if spec["method"] == "finetune" and ft.get("method") == "dmp" and ft.get("dmp", {}).get("gate", "soft") != "none":
        inputs["activation"] = f"{RESULTS}/finetune/{spec['finetune']}_activation.npz"
    return inputs


def get_log(rule, *wildcards):
    return f"{RESULTS}/logs/{rule}/{'_'.join(wildcards) or rule}.log"


def get_benchmark(rule, *wildcards):
    return f"{RESULTS}/benchmarks/{rule}/{'_'.join(wildcards) or rule}.tsv"


CONFIG_THREAD_RULES = set()  # rules whose `threads:` come from config


def get_threads(rule_name):
    """CPU threads of a rule's jobs: config `threads`, per rule or its `default` (a property of the machine that
    runs the DAG, like gpus_per_job: changing it reruns nothing)."""
    CONFIG_THREAD_RULES.add(rule_name)
    return config["threads"].get(rule_name, config["threads"]["default"])


def check_thread_rules():
    """Called after the includes. A name in config `threads` that takes no threads from config is a typo."""
    unknown = sorted(set(config["threads"]) - {"default"} - CONFIG_THREAD_RULES)
    if unknown:
        raise ValueError(f"config key threads: no rule named {', '.join(unknown)} takes its threads from config "
                         f"(those that do: {', '.join(sorted(CONFIG_THREAD_RULES))})")


def gpu_resources():
    """Resources of a GPU job; the slurm profile turns `gpu` into a GPU request."""
    return {"gpu": config["gpus_per_job"]}


def _plotted(decls, key):
    """The DeMe sets (key "deme") or finetunes ("finetune") whose plots are final outputs (so they are built):
    every one on the miniature (the smoke config exercises stage variants through these plots alone), a paper
    model's only where a table reports it (the default config declares them for every paper model; GPU-days each)."""
    reported = {RUNS[r].get(key) for t in TABLES for r in get_table_runs(t)}
    return [n for n, d in decls.items() if d["backbone"] in MINI_BACKBONES or n in reported]


def get_final_outputs():
    # the miniature's foundation (its summary, evaluator report, data coverage, curves), where it has backbones
    foundation = [f"{RESULTS}/foundation.md", f"{RESULTS}/evaluator/validation.md", f"{RESULTS}/data/coverage.md",
                  f"{RESULTS}/plots/training_curves.png", f"{RESULTS}/vae/reconstruction.png"]
    return [
        *(foundation if TEXT_BACKBONES else []),
        *[f"{RESULTS}/tables/{t}.{ext}" for t in TABLES for ext in ("csv", "md", "tex")],
        *([f"{RESULTS}/tables/claims.md"] if CLAIMS else []),
        *[f"{RESULTS}/plots/{t}_categories.png" for t in TABLES if set(CATEGORIES) & set(TABLES[t]["columns"])],
        *[f"{RESULTS}/plots/{t}_fid.png" for t in TABLES if "fid" in TABLES[t]["columns"]],
        *[get_run_path(r, "grid.png") for t in TABLES for r in get_table_runs(t) if "compbench" in run_evaluations(r)],
        *[f"{RESULTS}/plots/deme_cosine_{d}.png" for d in _plotted(DEME_SETS, "deme")],
        *[f"{RESULTS}/plots/{t}_{p}.png" for t in TABLES for p in TABLES[t].get("plots", [])
          if p in ("deme_sensitivity", "fid_vs_steps", "weight_change")],
        *[f"{RESULTS}/plots/dmp_activation_{f}.png" for f in _plotted(FINETUNES, "finetune")
          if FINETUNES[f]["method"] == "dmp" and FINETUNES[f].get("dmp", {}).get("gate", "soft") != "none"],
        # gates while sampling CompBench-mini prompts: the miniature's 2-stage runs
        *[get_run_path(r, "gates.png") for t in TABLES for r in get_table_runs(t) if RUNS[r]["method"] == "tsm2"
          and RUNS[r]["backbone"] in MINI_BACKBONES],
        *[f"{RESULTS}/plots/{t}_score_vs_n.png" for t in TABLES if "score_vs_n" in TABLES[t].get("plots", [])],
        *[f"{RESULTS}/samples/base/{b}.png" for b in TEXT_BACKBONES],
    ]


def get_clip_params():
    """What the evaluation scripts read of evaluation.clip: a transformers CLIP's name, {} for the workflow's own
    (rule train_clip_scorer, an input), None without CLIP score."""
    clip = config["evaluation"].get("clip")
    if clip is None:
        return None
    return {k: clip[k] for k in ("pretrained", "local_files_only") if k in clip}


def get_fid_params():
    """evaluation.fid as the evaluation scripts read it: the Inception weights only where FID uses Inception."""
    fid = dict(config["evaluation"]["fid"])
    if fid["feature_space"] != "inception":
        fid.pop("inception_weights", None)
    return fid


def get_inception_weights(wildcards):
    """The local Inception weights, for the Inception feature spaces only (the others never load them)."""
    inception = wildcards.feature_space in ("inception", "inception_patch")
    return config["evaluation"]["fid"].get("inception_weights") if inception else None
