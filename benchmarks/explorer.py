"""The chain explorer at the size issue 58 asks for: 64 chains x 100 draws x 3,072 tokens.

A synthetic run shaped like a suffix-MH run (each draw keeps a uniform prefix of the one before,
accepted a third of the time; a vocabulary of 151,936 ids as Qwen2.5's), written as a page and
opened in headless Chromium. Prints the page's size, the seconds to write it, to first contentful
paint, to the first draw on screen, and per step to the next draw and to the next chain.

    python -m benchmarks.explorer [--chains 64 --draws 100 --tokens 3072]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from ppl_ecmh.analysis import diagnostics, explorer
from ppl_ecmh.runner import Run

VOCABULARY = 151_936
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


def synthetic_run(chains: int, draws: int, tokens: int, seed: int = 0) -> Run:
    rng = np.random.default_rng(seed)
    shape = (chains, draws, tokens)
    ids, entropy = np.zeros(shape, np.int32), np.zeros(shape, np.float32)
    unkept_ids, unkept_entropy = np.zeros(shape, np.int32), np.zeros(shape, np.float32)
    cut, accepted = rng.integers(0, tokens, (chains, draws)), rng.random((chains, draws)) < 1 / 3
    fresh = lambda: (rng.integers(0, VOCABULARY, tokens), rng.gamma(0.5, 1.0, tokens).astype(np.float32))
    for chain in range(chains):
        current, current_entropy = fresh()
        for draw in range(draws):
            proposal, proposal_entropy = fresh()
            k = cut[chain, draw]
            proposal[:k], proposal_entropy[:k] = current[:k], current_entropy[:k]
            kept = (proposal, proposal_entropy) if accepted[chain, draw] else (current, current_entropy)
            other = (current, current_entropy) if accepted[chain, draw] else (proposal, proposal_entropy)
            ids[chain, draw], entropy[chain, draw] = kept
            unkept_ids[chain, draw], unkept_entropy[chain, draw] = other
            current, current_entropy = kept
    full = np.full((chains, draws), tokens, np.int32)
    stats = dict(log_target=-rng.gamma(50, 1.0, (chains, draws)).astype(np.float32), length=full,
                 accepted=accepted.astype(np.float32), accept_prob=rng.random((chains, draws)).astype(np.float32),
                 cut=cut.astype(np.int32), old_suffix_length=tokens - cut, new_suffix_length=tokens - cut,
                 num_generated=tokens - cut)
    settings = dict(sampler="entropy-cut", alpha=4.0, tau=0.25, max_new_tokens=tokens, num_chains=chains,
                    num_draws=draws, num_warmup=0, seed=seed, token_budget=None, prompt_tokens=[1])
    return Run(settings, ids, entropy, stats, np.ones(draws), np.zeros(chains, np.int32),
               dict(last_accepted=accepted, last_accept_prob=stats["accept_prob"], unkept_tokens=unkept_ids,
                    unkept_entropy=unkept_entropy, unkept_length=full))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chains", type=int, default=64)
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=3072)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    run = synthetic_run(args.chains, args.draws, args.tokens)
    pieces = {int(i): f"t{i} " for i in np.unique(np.concatenate([run.tokens.ravel(), run.last_step["unkept_tokens"].ravel()]))}
    idata = diagnostics.to_inference_data(run, pieces=pieces)
    with tempfile.TemporaryDirectory() as folder:
        tick = time.perf_counter()
        path = explorer.write_explorer({"synthetic": idata}, Path(folder) / "explorer.html")
        write_s = time.perf_counter() - tick
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            tick = time.perf_counter()
            page.goto(path.as_uri())
            page.wait_for_selector("body[data-ready=true]", timeout=300_000)
            ready_s = time.perf_counter() - tick
            paint = page.evaluate("() => performance.getEntriesByType('paint').map(e => [e.name, e.startTime])")
            step = lambda script, n: page.evaluate(f"() => {{ const t = performance.now(); for (let i = 0; i < {n}; i++) "
                                                   f"{{ {script} }} return (performance.now() - t) / {n}; }}")
            next_draw_ms = step("window.explorer.select(0, 0, (window.explorer.state.draw + 1) % "
                                f"{args.draws}); document.body.offsetHeight;", 50)
            next_chain_ms = step("window.explorer.select(0, (window.explorer.state.chain + 1) % "
                                 f"{args.chains}, {args.draws - 1}); document.body.offsetHeight;", 20)
            browser.close()
        size = path.stat().st_size
    print(json.dumps(dict(chains=args.chains, draws=args.draws, tokens=args.tokens, page_mb=round(size / 1e6, 1),
                          write_s=round(write_s, 1), first_contentful_paint_s=round(dict(paint).get(
                              "first-contentful-paint", float("nan")) / 1000, 2),
                          first_draw_on_screen_s=round(ready_s, 2), next_draw_ms=round(next_draw_ms, 1),
                          next_chain_last_draw_ms=round(next_chain_ms, 1))))


if __name__ == "__main__":
    main()
