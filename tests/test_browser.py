"""The page in a real headless Chromium (Debian's, driven by Playwright): type a word, press Write, read a poem."""

from __future__ import annotations

import shutil

import pytest
# The tiny runs and the live server as fixtures, and a server of one's own with a poem written until it is stopped.
from test_serve import LiveServer, endless_when_cold, runs, server  # noqa: F401

sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs `pip install playwright`")
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
if CHROMIUM is None:
    pytest.skip("no Chromium to drive: `apt-get install chromium`", allow_module_level=True)

# Playwright's own browser download cannot run offline; Debian's Chromium is launched quietly in its place.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):  # noqa: F811
    context = browser.new_context(base_url=server.url, viewport={"width": 1000, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto("/")
    sync_api.expect(page.locator("#write-button")).to_be_enabled()
    yield page
    context.close()


def test_type_a_word_press_write_see_the_poem_in_lines_and_stanzas(page):
    page.fill("#start", "love")
    with page.expect_response("**/api/generate") as answer:
        page.click("#write-button")
    poem = answer.value.json()["poem"]
    first = page.locator("#stanzas .line").first
    sync_api.expect(first).to_have_text(poem.split("\n")[0])
    assert poem.startswith("love")
    stanzas = poem.split("\n\n")
    assert page.locator("#stanzas .stanza").count() == len(stanzas)
    assert page.locator("#stanzas .line").all_text_contents() == [ln for s in stanzas for ln in s.split("\n")]
    assert "seed" in page.inner_text("#about")


def test_the_keyboard_keeps_its_place_on_the_write_button(page):
    page.focus("#write-button")
    for _ in range(2):  # the second Enter writes again: the button still has the focus
        with page.expect_response("**/api/generate"):
            page.keyboard.press("Enter")
        sync_api.expect(page.locator("#write-button")).to_be_enabled()
    assert page.evaluate("document.activeElement.id") == "write-button"


def test_quatrains_are_asked_for_and_shown_four_lines_a_stanza(page):
    page.fill("#start", "love")
    page.fill("#words", "120")
    page.select_option("#form", label="quatrains")
    with page.expect_response("**/api/generate") as answer:
        page.click("#write-button")
    assert answer.value.request.post_data_json["form"] == "quatrain"
    sync_api.expect(page.locator("#stanzas .line").first).to_be_visible()
    counts = [s.locator(".line").count() for s in page.locator("#stanzas .stanza").all()]
    assert counts and all(n == 4 for n in counts[:-1]) and counts[-1] <= 4


def test_the_page_names_the_model_and_offers_each_checkpoint(page):
    model = page.inner_text("#model")
    assert "tiny" in model and "vocabulary" in model and "held-out perplexity" in model
    assert page.locator("#choice-row").is_visible()
    labels = page.locator("#choice option").all_text_contents()
    epoch_1 = next(label for label in labels if label.startswith("other · epoch-1 (epoch 1, perplexity "))
    assert len(labels) == 6 and "perplexity" in labels[0]  # each checkpoint's, to choose among them
    page.select_option("#choice", label=epoch_1)
    assert page.inner_text("#model").startswith("other")
    with page.expect_request("**/api/generate") as sent:
        page.click("#write-button")
    assert sent.value.post_data_json["run"] == "other" and sent.value.post_data_json["checkpoint"] == "epoch-1"


def test_an_empty_box_begins_with_the_word_it_shows(page):
    shown = page.get_attribute("#start", "placeholder")
    assert shown
    with page.expect_response("**/api/generate") as answer:
        page.click("#write-button")
    assert answer.value.request.post_data_json["start"] == shown
    assert answer.value.json()["poem"].startswith(shown)


def test_an_unknown_word_shows_the_close_words(page):
    page.fill("#start", "lovv")
    page.click("#write-button")
    sync_api.expect(page.locator("#error")).to_contain_text("close words it knows: love")


def test_copy_puts_the_poem_on_the_clipboard(page):
    with page.expect_response("**/api/generate") as answer:
        page.press("#start", "Enter")
    page.click("#copy")
    sync_api.expect(page.locator("#copy")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == answer.value.json()["poem"]


def test_on_a_phone_nothing_is_wider_than_the_screen(browser, server):  # noqa: F811
    context = browser.new_context(base_url=server.url, viewport={"width": 360, "height": 740}, is_mobile=True)
    page = context.new_page()
    page.goto("/")
    page.fill("#start", "love")
    page.click("#write-button")
    sync_api.expect(page.locator("#stanzas .line").first).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    context.close()


def test_the_report_page_shows_every_column_of_its_table(browser, tiny_run, tmp_path):
    """Headers that never wrapped hid the last three columns of a two-run table past the page's measure."""
    import shutil

    from neuralda.report import write_report

    copies = [shutil.copytree(tiny_run, tmp_path / name) for name in ("seed-recipe-run", "thoutt-recipe-run")]
    write_report([str(r) for r in copies], tmp_path / "post.md", tmp_path / "post.html", samples=1, words=8)
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto((tmp_path / "post.html").as_uri())
    assert page.evaluate("(t => t.scrollWidth <= t.clientWidth)(document.querySelector('table'))")
    page.close()


def test_the_report_s_poems_stand_side_by_side_on_a_desktop_and_stack_on_a_phone(browser, tiny_run, tmp_path):
    """Long run names overflowed their columns' headings; on a phone three columns broke every line of the poems;
    an Arabic poem ran left to right, its marks at the wrong ends of its lines."""
    import shutil

    from neuralda.report import Entry, html_page
    from neuralda.run import Run

    opened = [Run.open(shutil.copytree(tiny_run, tmp_path / name))
            for name in ("neruda_lstm_512x2_dropout05_seed42", "seed_recipe_keras_reproduction_run")]
    entries = [Entry(run, f"epoch-{e}", e, f"After {e} training epochs", "the sea remembers\nevery ship", {})
               for run in opened for e in (200, 400)]
    entries[-1].poem = "البحر يتذكر كل سفينة!"
    (tmp_path / "post.html").write_text(html_page(opened, entries, "t", None, ""))
    cells = "[...document.querySelectorAll('table.poems td')]"
    for width, side_by_side in ((900, True), (390, False)):
        page = browser.new_page(viewport={"width": width, "height": 900})
        page.goto((tmp_path / "post.html").as_uri())
        assert page.evaluate(f"{cells}.every(c => c.querySelector('.who').scrollWidth <= c.clientWidth)")
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        tops = page.evaluate(f"{cells}.map(c => c.getBoundingClientRect().top)")
        assert (len(set(tops)) == 2) if side_by_side else (len(set(tops)) == len(entries))  # 2 + 2, or one a row
        direction = page.evaluate(f"getComputedStyle({cells}.at(-1).querySelector('p')).direction")
        assert direction == "rtl"
        page.close()


def test_the_page_writes_perplexities_as_the_tables_do(page):
    from neuralda.evaluate import format_ppl

    for value in (1.0, 127.25, 127.75, 0.35, 127.66, 999999.94, 1e6, 1234567.0, 2.93e111, 1.5e300):
        assert page.evaluate(f"formatPpl({value!r})") == format_ppl(value)


def test_the_report_table_fits_a_desktop_page_with_an_early_checkpoints_numbers(browser, tiny_run, tmp_path):
    """An early epoch's five-digit perplexity per word pushed the last column, distinct-2, past the page's measure."""
    import shutil

    from neuralda.report import Entry, html_page
    from neuralda.run import Run

    opened = [Run.open(shutil.copytree(tiny_run, tmp_path / name)) for name in ("seed", "neruda")]
    measures = dict(perplexity=1664.8, perplexity_per_word=22246.4, bits_per_char=2.83, copied_4gram_share=0.0,
                    copied_6gram_share=0.0, copied_8gram_share=0.0, longest_copy=2, distinct_2=1.0)
    entries = [Entry(run, f"epoch-{e}", e, f"After {e} training epochs", "love", dict(measures, epoch=e))
               for run in opened for e in (200, 400)]
    (tmp_path / "post.html").write_text(html_page(opened, entries, "t", None, ""))
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto((tmp_path / "post.html").as_uri())
    assert page.evaluate("(t => t.scrollWidth <= t.clientWidth)(document.querySelector('table'))")
    page.close()


def test_a_poem_is_marked_in_the_language_of_its_poets_poems(page):
    """The page speaks English; the served "other" run's poems say they are Spanish, so its poem and its start word
    are marked so (screen readers pronounce them by it), and the first run's, which say nothing, are not."""
    for run, lang in (("other", "es"), ("tiny", None)):
        page.select_option("#choice", value=f'["{run}","best"]')
        with page.expect_response("**/api/generate"):
            page.click("#write-button")
        sync_api.expect(page.locator("#stanzas .line").first).to_be_visible()
        assert page.get_attribute("#stanzas", "lang") == lang and page.get_attribute("#start", "lang") == lang
        assert page.evaluate("document.documentElement.lang") == "en"


def test_a_right_to_left_poem_reads_from_the_right_and_the_policy_blocks_nothing(page):
    """An Arabic poem's lines sat on the left with its full stop at the wrong end (the report marked its stanzas
    dir="auto"; the page did not); and the page's Content-Security-Policy must leave its own script and style be."""
    complaints = []
    page.on("console", lambda m: complaints.append(m.text) if m.type in ("error", "warning") else None)
    page.reload()
    sync_api.expect(page.locator("#write-button")).to_be_enabled()
    poem = {"poem": "السماء.\nبحر\n\nlove, the sea.", "words": 4, "ms": 1.0, "seed": 1, "ended": True,
            "run": "tiny", "checkpoint": "best"}
    page.route("**/api/generate", lambda route: route.fulfill(json=poem))
    page.click("#write-button")
    sync_api.expect(page.locator("#stanzas .line").first).to_have_text("السماء.")
    directions = page.eval_on_selector_all("#stanzas .stanza", "ps => ps.map(p => getComputedStyle(p).direction)")
    assert directions == ["rtl", "ltr"]
    assert not [c for c in complaints if "Content Security Policy" in c], complaints


def test_each_slider_is_named_by_its_label(page):
    # A label holding an <output> named the output, not the slider: a screen reader heard "slider 0.9".
    for name in ("Temperature", "Top-p", "Length"):
        sync_api.expect(page.get_by_role("slider", name=name)).to_have_count(1)
    page.click("label[for=words]")
    assert page.evaluate("document.activeElement.id") == "words"
    assert page.get_attribute("#words", "aria-valuetext") == "120 words"


def test_a_long_right_to_left_line_wraps_inside_a_phone_s_screen(browser, server):  # noqa: F811
    context = browser.new_context(base_url=server.url, viewport={"width": 360, "height": 740}, is_mobile=True)
    page = context.new_page()
    page.goto("/")
    sync_api.expect(page.locator("#write-button")).to_be_enabled()
    line = " ".join(["السماء الزرقاء فوق البحر"] * 6)
    poem = {"poem": line, "words": 24, "ms": 1.0, "seed": 1, "ended": True, "run": "tiny", "checkpoint": "best"}
    page.route("**/api/generate", lambda route: route.fulfill(json=poem))
    page.click("#write-button")
    sync_api.expect(page.locator("#stanzas .line").first).to_have_text(line)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    # Where its letters are: padding-left with a hanging indent put the first part of the line past the right edge.
    left, right = page.evaluate("""() => {
        const range = document.createRange();
        range.selectNodeContents(document.querySelector("#stanzas .line"));
        const rects = [...range.getClientRects()];
        return [Math.min(...rects.map(r => r.left)), Math.max(...rects.map(r => r.right))];
    }""")
    column = page.locator("#stanzas").bounding_box()
    assert left >= column["x"] - 0.5 and right <= column["x"] + column["width"] + 0.5
    context.close()


def test_a_poem_being_written_can_be_stopped(page):
    held = []
    page.route("**/api/generate", lambda route: held.append(route))  # never answered: a slow poem
    page.focus("#write-button")
    page.keyboard.press("Enter")
    sync_api.expect(page.locator("#stop")).to_be_visible()
    assert page.evaluate("document.activeElement.id") == "stop"  # the keyboard's place moves to Stop
    page.keyboard.press("Enter")
    sync_api.expect(page.locator("#write-button")).to_be_enabled()
    sync_api.expect(page.locator("#status")).to_have_text("Stopped.")
    assert page.locator("#stop").is_hidden() and page.locator("#error").is_hidden() and len(held) == 1
    assert page.evaluate("document.activeElement.id") == "write-button"


def test_a_server_that_does_not_answer_is_named_and_the_poem_shown_is_marked_stale(page):
    with page.expect_response("**/api/generate"):
        page.click("#write-button")
    page.route("**/api/generate", lambda route: route.abort())
    page.click("#write-button")
    sync_api.expect(page.locator("#error")).to_contain_text("is neuralda serve still running?")
    assert "stale" in page.get_attribute("#poem", "class")
    page.unroute("**/api/generate")
    with page.expect_response("**/api/generate"):
        page.click("#write-button")
    sync_api.expect(page.locator("#error")).to_be_hidden()
    sync_api.expect(page.locator("#poem")).not_to_have_class("poem stale")


def test_a_busy_server_is_asked_again_after_its_retry_after(page):
    answers = []

    def busy_once(route):
        answers.append(route.request.url)
        if len(answers) == 1:
            route.fulfill(status=503, headers={"Retry-After": "1"}, json={"detail": "ask again in a moment"})
        else:
            route.continue_()

    page.route("**/api/generate", busy_once)
    page.click("#write-button")
    sync_api.expect(page.locator("#stanzas .line").first).to_be_visible()
    assert len(answers) == 2 and page.locator("#error").is_hidden()


def test_the_page_lists_the_poets_once_the_server_answers(browser, server):  # noqa: F811
    context = browser.new_context(base_url=server.url)
    page = context.new_page()
    refused = []
    page.route("**/api/models", lambda route: refused.append(1) or route.abort() if not refused else route.continue_())
    page.goto("/")
    sync_api.expect(page.locator("#error")).to_contain_text("asking again in 1 s")
    sync_api.expect(page.locator("#write-button")).to_be_enabled()
    sync_api.expect(page.locator("#error")).to_be_hidden()
    context.close()


def test_the_choices_are_kept_on_reload(page):
    page.select_option("#choice", value='["other","last"]')
    page.select_option("#form", label="tercets")
    page.fill("#words", "300")
    page.dispatch_event("#words", "change")
    page.fill("#start", "the sea")
    page.dispatch_event("#start", "change")
    page.reload()
    sync_api.expect(page.locator("#write-button")).to_be_enabled()
    assert page.input_value("#choice") == '["other","last"]' and page.input_value("#form") == "tercet"
    assert page.input_value("#words") == "300" and page.inner_text("#words-out") == "300"
    assert page.input_value("#start") == "the sea" and page.inner_text("#model").startswith("other")


def test_stop_on_the_page_stops_the_poem_on_the_server(browser, runs, monkeypatch):  # noqa: F811
    begun, stopped = endless_when_cold(monkeypatch)  # a poem at temperature 0.5 is written until it is stopped
    with LiveServer([str(runs[0])]) as live:
        context = browser.new_context(base_url=live.url)
        page = context.new_page()
        page.goto("/")
        sync_api.expect(page.locator("#write-button")).to_be_enabled()
        page.fill("#temperature", "0.5")
        page.click("#write-button")
        assert begun.wait(10)
        page.click("#stop")
        assert stopped.wait(5)  # the browser closed the request; the server saw it and stopped writing
        sync_api.expect(page.locator("#status")).to_have_text("Stopped.")
        context.close()
