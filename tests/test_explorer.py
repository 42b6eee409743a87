"""The chain explorer: what a run's page stores, and what headless Chromium shows of it.

The browser tests drive Debian's Chromium through Playwright (`.ci/run` installs both); without
them they skip, except in CI, where a missing browser fails the run.
"""

import base64
import os
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest

import ppl_ecmh
from ppl_ecmh.analysis import diagnostics, explorer
from ppl_ecmh.analysis.report import comparison_table
from ppl_ecmh.evaluation.report import eval_problems
from ppl_ecmh.lm.decision_points import DecisionPoints
from ppl_ecmh.registry import SamplerSpec
from ppl_ecmh.runner import run_sampler

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--no-first-run", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 1000}
REFERENCE = Path(__file__).parent / "fixtures" / "explorer_layout.png"
MODEL = DecisionPoints(length=64, positions=(10, 30, 50))
WORDS = {token: f"w{token} " for token in range(MODEL.vocab_size)} | {MODEL.vocab_size: "<eos>"}


@pytest.fixture(scope="module")
def run():
    """An entropy-cut run on a decision-point model: 4 chains of 30 draws, 64 tokens each."""
    result = run_sampler(MODEL.lm(), [0], SamplerSpec("entropy-cut"), alpha=4.0, max_new_tokens=MODEL.length,
                         num_chains=4, num_draws=30, progress=False)
    return diagnostics.to_inference_data(result, model="decision points", prompt="(none)", pieces=WORDS)


def draw_tokens(idata, chain, draw, unkept=False):
    completions = idata.completions
    if unkept:
        length = int(completions["unkept_length"].values[chain, draw])
        return completions["unkept_tokens"].values[chain, draw, :length].tolist()
    length = int(idata.posterior["length"].values[chain, draw])
    return completions["tokens"].values[chain, draw, :length].tolist()


def test_a_page_stores_what_the_run_decoded_not_every_draw_whole(run):
    """Each draw is stored past its common prefix with the draw before, the unkept side past its
    common prefix with the draw: at most the tokens the steps decoded and replaced."""
    data = explorer.chain_data(run)
    stored = len(np.frombuffer(zlib.decompress(base64.b64decode(data["tokens"])), np.int32))
    stats = run.sample_stats
    bound = int(stats["num_generated"].sum() + stats["old_suffix_length"].sum() + run.posterior["length"][:, 0].sum())
    whole = int(run.posterior["length"].sum() + run.completions["unkept_length"].sum())
    assert stored <= bound and stored < whole / 2, (stored, bound, whole)


def test_explore_takes_a_run_from_the_runner_as_it_takes_its_inference_data():
    result = run_sampler(MODEL.lm(), [0], SamplerSpec("entropy-cut"), alpha=4.0, max_new_tokens=MODEL.length,
                         num_chains=2, num_draws=3, progress=False)

    class Words:
        pieces = staticmethod(lambda *arrays: WORDS)

    assert ppl_ecmh.explore(result, model=Words()).page == ppl_ecmh.explore(
        diagnostics.to_inference_data(result, pieces=WORDS)).page


def test_explore_takes_a_numpyro_mcmc_run_which_draws_what_the_runner_draws():
    """The documented NumPyro API and the runner draw the same tokens from the same seed, and the
    MCMC run, recorded with RECORDED_FIELDS, becomes the same Run, both sides of each draw's last
    step included, so its page shows what each step did not keep."""
    import jax
    from numpyro.infer import MCMC

    from ppl_ecmh.runner import RECORDED_FIELDS, run_of_mcmc

    mcmc = MCMC(ppl_ecmh.EntropyCutMH(ppl_ecmh.power_model), num_warmup=0, num_samples=3, num_chains=2,
                chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0), MODEL.lm(), [0], alpha=4.0, max_new_tokens=MODEL.length,
             extra_fields=RECORDED_FIELDS)
    ours = run_of_mcmc(mcmc)
    theirs = run_sampler(MODEL.lm(), [0], SamplerSpec("entropy-cut"), alpha=4.0, max_new_tokens=MODEL.length,
                         num_chains=2, num_draws=3, progress=False)
    np.testing.assert_array_equal(ours.tokens, theirs.tokens)
    np.testing.assert_allclose(ours.entropy, theirs.entropy, atol=1e-6)
    for field, value in theirs.stats.items():
        np.testing.assert_allclose(ours.stats[field], value, atol=1e-5, err_msg=field)
    assert set(ours.last_step) == set(theirs.last_step)
    for field, value in theirs.last_step.items():
        np.testing.assert_allclose(ours.last_step[field], value, atol=1e-5, err_msg=field)
    assert ours.last_step["unkept_length"].any()  # the steps did leave something unkept
    page = ppl_ecmh.explore(mcmc).page
    assert "EntropyCutMH" in page and '"hasUnkept":true' in page
    [row] = comparison_table({"mcmc": diagnostics.to_inference_data(ours)})  # a report's table, without text
    assert row["tokens"] == int(theirs.stats["num_generated"].sum()) and row["answer_agreement"] in (0.5, 1.0)

    plain = MCMC(ppl_ecmh.EntropyCutMH(ppl_ecmh.power_model), num_warmup=0, num_samples=1, progress_bar=False)
    plain.run(jax.random.PRNGKey(0), MODEL.lm(), [0], alpha=4.0, max_new_tokens=MODEL.length)
    with pytest.raises(ValueError, match="lacks the fields entropy, log_target"):
        ppl_ecmh.explore(plain)


def test_a_page_is_self_contained_and_no_text_can_end_its_script(run):
    hostile = dict(WORDS) | {3: "</script><script>alert(1)</script>"}
    page = explorer.explorer_html({"x": diagnostics.to_inference_data(
        run_sampler(MODEL.lm(), [0], SamplerSpec("entropy-cut"), alpha=4.0, max_new_tokens=MODEL.length,
                    num_chains=1, num_draws=2, progress=False), pieces=hostile)})
    assert page.count("</script>") == 2  # the data's and the script's own
    assert "http://" not in page and "https://" not in page


# --- in a browser


@pytest.fixture(scope="module")
def browser():
    if os.environ.get("CI"):
        import playwright.sync_api as sync_api  # in CI a missing browser fails, never skips
    else:
        sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"no Chromium at {CHROMIUM}: .ci/run installs Debian's chromium")
        pytest.skip("no Chromium (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


class Page:
    """A page opened from a file, with every console error and uncaught exception collected."""

    def __init__(self, browser, path: Path):
        self.page = browser.new_page(viewport=VIEWPORT)
        self.errors = []
        self.page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.goto(path.as_uri())
        self.page.wait_for_selector("body[data-ready=true]", timeout=20_000)

    def ids(self, selector: str) -> list[int]:
        return [int(i) for i in self.page.eval_on_selector_all(f"{selector} .tok", "els => els.map(e => e.dataset.id)")]

    def state(self) -> dict:
        return self.page.evaluate("() => ({...window.explorer.state})")


@pytest.fixture
def page(browser, run, tmp_path):
    opened = Page(browser, explorer.write_explorer({"entropy-cut": run}, tmp_path / "explorer.html"))
    yield opened
    assert opened.errors == []
    opened.page.close()


def test_every_draw_shows_its_own_tokens(page, run):
    for chain in range(run.posterior.sizes["chain"]):
        for draw in range(run.posterior.sizes["draw"]):
            page.page.evaluate(f"() => window.explorer.select(0, {chain}, {draw})")
            assert page.ids("#completion") == draw_tokens(run, chain, draw), (chain, draw)


def check_rejected_step(page: Page, run) -> None:
    """Stepping to a rejected proposal shows its cut in the completion and in both suffixes, the
    current suffix (kept) and the proposed one, and the step's acceptance probability."""
    page.page.keyboard.press("n")
    chain, draw = page.state()["chain"], page.state()["draw"]
    assert not run.sample_stats["last_accepted"].values[chain, draw]
    cut = int(run.sample_stats["cut"].values[chain, draw])
    assert page.page.inner_text("#decision") == "rejected"
    assert page.page.inner_text("#cut-position") == str(cut)
    assert float(page.page.inner_text("#accept-prob")) == pytest.approx(
        run.sample_stats["last_accept_prob"].values[chain, draw], abs=1e-3)
    for box in ("#completion", "#suffix-current", "#suffix-proposed"):
        following = page.page.evaluate(f"() => [...document.querySelectorAll('{box} .cut-marker')]"
                                       ".map(m => m.nextElementSibling ? Number(m.nextElementSibling.dataset.i) : -1)")
        assert len(following) == 1, f"{box}: {len(following)} cut markers"
        assert following[0] in (cut, -1), f"{box}: the marker stands before token {following[0]}, not {cut}"
    assert page.ids("#suffix-current") == draw_tokens(run, chain, draw)[cut:]
    assert page.ids("#suffix-proposed") == draw_tokens(run, chain, draw, unkept=True)[cut:]
    assert page.page.inner_text("#current-badge") == "kept"


def test_stepping_to_a_rejected_proposal_shows_its_cut_and_both_suffixes(page, run):
    check_rejected_step(page, run)
    draw = page.state()["draw"]
    for key in ("ArrowRight", "ArrowDown", "ArrowDown", "ArrowUp"):
        page.page.keyboard.press(key)
    assert page.state() == {"run": 0, "chain": 1, "draw": draw + 1}
    assert page.page.input_value("#draw") == str(draw + 1) and page.page.input_value("#chain") == "1"
    page.page.keyboard.press("End")
    assert page.state()["draw"] == run.posterior.sizes["draw"] - 1


def test_the_check_fails_on_a_page_without_its_cut_marker(browser, run, tmp_path):
    """The rejected-step check is not vacuous: a page whose script never draws the cut marker fails it."""
    page_text = explorer.explorer_html({"entropy-cut": run}).replace("class='cut-marker'", "class='no-marker'")
    path = tmp_path / "broken.html"
    path.write_text(page_text)
    broken = Page(browser, path)
    with pytest.raises(AssertionError, match="0 cut markers"):
        check_rejected_step(broken, run)
    broken.page.close()


def test_clicking_the_trace_opens_that_draw(page, run):
    chain, draw = 2, 17
    page.page.evaluate(f"() => window.explorer.select(0, {chain}, 0)")
    point = page.page.evaluate(
        f"() => {{ const box = document.getElementById('trace').getBoundingClientRect();"
        f" const s = document.querySelector('#trace polyline.selected').getAttribute('points').split(' ')[{draw}]"
        f".split(',').map(Number); return [box.left + s[0], box.top + s[1]]; }}")
    page.page.evaluate("() => window.explorer.select(0, 0, 0)")
    page.page.mouse.click(*point)
    state = page.state()
    assert state["draw"] == draw
    # several chains can share a value at a draw: the click opens one whose trace passes there
    log_target = run.posterior["log_target"].values
    assert log_target[state["chain"], draw] == pytest.approx(log_target[chain, draw], abs=1e-3)


def block_means(image: np.ndarray, blocks=(16, 20)) -> np.ndarray:
    grey = image[..., :3].mean(axis=-1)
    rows, cols = blocks
    h, w = grey.shape[0] // rows * rows, grey.shape[1] // cols * cols
    return grey[:h, :w].reshape(rows, h // rows, cols, w // cols).mean(axis=(1, 3))


def differs_from_reference(page: Page, path: Path, reference: bool = False) -> bool:
    """Whether a screenshot, in 16 x 20 blocks of grey, is far from the committed one: not
    pixel-exact, so other fonts pass, while a panel missing or moved does not (the same
    machine's screenshot differs by 0.001 at most; one without the suffix panels by 0.004 on
    average and 0.09 in its worst block)."""
    import matplotlib.image

    page.page.screenshot(path=str(path))
    if reference and os.environ.get("PPL_ECMH_UPDATE_SCREENSHOT"):
        shutil.copy(path, REFERENCE)
    difference = np.abs(block_means(matplotlib.image.imread(path)) - block_means(matplotlib.image.imread(REFERENCE)))
    return difference.mean() > 0.003 or difference.max() > 0.05


def test_the_page_keeps_its_layout(page, tmp_path):
    """Trace above the step, the completion below, the two suffixes side by side under it, and a
    screenshot close to the committed one (regenerate it with PPL_ECMH_UPDATE_SCREENSHOT=1)."""
    page.page.evaluate("() => window.explorer.select(0, 0, 0)")
    page.page.keyboard.press("n")
    boxes = {name: page.page.locator(f"#{name}").bounding_box()
             for name in ("trace", "step", "completion", "suffix-current", "suffix-proposed")}
    assert boxes["trace"]["y"] < boxes["step"]["y"] < boxes["completion"]["y"] < boxes["suffix-current"]["y"]
    assert boxes["suffix-current"]["y"] == pytest.approx(boxes["suffix-proposed"]["y"], abs=2)
    assert boxes["suffix-current"]["x"] + boxes["suffix-current"]["width"] <= boxes["suffix-proposed"]["x"]
    assert boxes["suffix-proposed"]["x"] + boxes["suffix-proposed"]["width"] <= VIEWPORT["width"]
    assert not differs_from_reference(page, tmp_path / "explorer.png", reference=True)
    page.page.add_style_tag(content="#sides{display:none}")
    assert differs_from_reference(page, tmp_path / "without-suffixes.png")


def test_the_page_shows_inline_in_a_notebook_frame(browser, run, tmp_path):
    """`ppl_ecmh.explore(run)` is what Jupyter renders: the page in a frame of its own."""
    shown = ppl_ecmh.explore(run)._repr_html_()
    assert ppl_ecmh.explore({"entropy-cut": run}).page == ppl_ecmh.explore(run).page
    path = tmp_path / "notebook.html"
    path.write_text(f"<!doctype html><html><body>{shown}</body></html>")
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(path.as_uri())
    frame = page.frame_locator("iframe")
    frame.locator("body[data-ready=true]").wait_for(timeout=20_000)
    length = int(run.posterior["length"].values[0, 0])
    assert frame.locator("#completion .tok").count() == length
    page.close()


def test_a_token_budget_run_keeps_both_sides_of_each_step_as_the_engine_does():
    """A run with a token budget goes through the sampler's NumPyro kernel, which drives the engine:
    its draws, and what each draw's last step did not keep, are the engine run's first draws."""
    options = dict(alpha=4.0, max_new_tokens=MODEL.length, num_chains=2, num_draws=4, progress=False)
    budgeted = run_sampler(MODEL.lm(), [0], SamplerSpec("entropy-cut"), token_budget=30, **options)
    whole = run_sampler(MODEL.lm(), [0], SamplerSpec("entropy-cut"), **options)
    kept = budgeted.tokens.shape[1]
    assert 1 <= kept < 4
    np.testing.assert_array_equal(budgeted.tokens, whole.tokens[:, :kept])
    for field, value in whole.last_step.items():
        np.testing.assert_allclose(budgeted.last_step[field], value[:, :kept], atol=1e-5, err_msg=field)


def test_a_run_without_the_unkept_side_shows_its_draws_alone(browser, tmp_path):
    """Population samplers (here Power-SMC) make no MH step, so they keep no unkept side: the page
    shows the draws and hides the side-by-side view."""
    result = run_sampler(MODEL.lm(), [0], SamplerSpec("power-smc", num_particles=4), alpha=4.0,
                         max_new_tokens=MODEL.length, num_chains=2, num_draws=4, progress=False)
    assert result.last_step is None
    idata = diagnostics.to_inference_data(result, pieces=WORDS)
    opened = Page(browser, explorer.write_explorer({"smc": idata}, tmp_path / "smc.html"))
    opened.page.keyboard.press("ArrowRight")
    assert opened.ids("#completion") == draw_tokens(idata, 0, 1)
    assert opened.page.locator("#sides").is_hidden()
    assert opened.errors == []
    opened.page.close()


def test_the_evaluation_view_shows_each_problem_beside_its_grades(browser, tmp_path):
    records = [dict(sampler=sampler, seed=0, problem_id=f"p{i}", correct=correct, answer=str(i),
                    completion=f"{sampler} answer to p{i} <b>")
               for i, grades in enumerate([(True, True), (False, True), (False, False)])
               for sampler, correct in zip(("ancestral", "ecmh"), grades)]
    path = tmp_path / "eval.html"
    path.write_text(explorer.eval_page("evaluation", eval_problems(records)))
    opened = Page(browser, path)
    page = opened.page
    assert page.inner_text("table.totals").split("\n")[1:] == ["ancestral · seed 0\t1 / 3", "ecmh · seed 0\t2 / 3"]
    assert page.locator("details.problem").count() == 3
    page.check("#disagree")
    assert page.locator("details.problem").count() == 1
    page.locator("details.problem summary").click()
    page.locator("details.problem .columns pre").first.wait_for()  # rendered when opened
    columns = page.locator("details.problem .columns pre").all_inner_texts()
    assert columns == ["ancestral answer to p1 <b>", "ecmh answer to p1 <b>"]
    assert opened.errors == []
    page.close()
