"""One set of templates for the atlas and the explorer: one layout, one stylesheet, the channel page's sections
as shared macros (outputs/templates), the explorer's pages over them (serve/templates)."""

from importlib import resources

import jinja2
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from filterscope.outputs.site import environment, stylesheet

SHARED = ("base.html", "_channel.html", "style.css")
RENDER_API = "/api/render/efficientnet_lite0/blocks.5/3?method=fast&seed=0"
EXAMPLES = [{"src": "/photo/ab.png", "name": "chelsea_0.jpg", "value": 8.924}]
TABLE = [("layer", "blocks.5"), ("method", "fast"), ("interpretability score", "0.77")]


def _explorer_env() -> jinja2.Environment:
    return environment(jinja2.PackageLoader("filterscope.serve", "templates"))


def _filter_page(**over) -> str:
    ctx = {
        "live": True, "csrf": "t", "model_name": "efficientnet_lite0", "version": "0", "cache_dir": "/c",
        "atlas": True, "model_b_name": None, "layer": "blocks.5", "channel": 3, "channels": 8, "h": None,
        "base": "/m/efficientnet_lite0/blocks.5", "render_api": RENDER_API, "diversity": 2, "table": TABLE,
        "examples": EXAMPLES, "n_photos": 36, "atlas_page": "/atlas/blocks.5/channel_0003.html",
        "circuit": {"rec": None, "api": "/api/circuit/x"}, "tuning": {"rec": None, "api": "/api/tuning/x"},
        "unit_features": {"computed": False, "index": "/m/efficientnet_lite0/blocks.5/features"},
    }  # fmt: skip
    return _explorer_env().get_template("filter.html").render(**{**ctx, **over})


def _atlas_page() -> str:
    ch = {
        "index": 3, "render": "channel_0003.png", "prev": "channel_0002.html", "next": None, "diversity": [],
        "examples": [{**EXAMPLES[0], "thumb": "../examples/t.png"}], "table": TABLE,
        "hist": [{"height": 100, "count": 1, "label": "a"}], "hist_lo": 0.0, "hist_hi": 1.0,
    }  # fmt: skip
    return (
        environment()
        .get_template("channel.html")
        .render(
            root="../",
            live=False,
            model_name="efficientnet_lite0",
            model={},
            version="0",
            layer={"name": "blocks.5"},
            ch=ch,
            n_images=36,
        )
    )


def test_the_explorer_takes_the_shared_templates_from_outputs():
    own = {p.name for p in resources.files("filterscope.serve").joinpath("templates").iterdir()}
    assert not own & set(SHARED), "a copy in serve/templates would shadow the one the atlas uses"
    env = _explorer_env()
    for name in ("base.html", "_channel.html"):
        assert env.get_template(name).filename == environment().get_template(name).filename


def test_atlas_and_explorer_channel_pages_share_layout_and_sections():
    atlas, live = _atlas_page(), _filter_page()
    # one layout: the atlas's links work from file://, the explorer's come from /static/ with its script
    assert '<link rel="stylesheet" href="../style.css">' in atlas and "<script" not in atlas
    assert '<link rel="stylesheet" href="/static/style.css">' in live and '<script src="/static/live.js">' in live
    assert atlas.count("<main>") == live.count("<main>") == 1  # the explorer's atlas route inserts its link there
    # one settings section: the same rows, the same markup
    table = "<table>\n<tr><th>layer</th><td>blocks.5</td></tr><tr><th>method</th><td>fast</td></tr>"
    assert table in atlas and table in live
    # one dataset-examples section: the explorer's figure is the atlas's without the thumbnail
    fig = '<img class="mid" src="/photo/ab.png" alt="%s">\n'
    assert fig % "peak crop from chelsea_0.jpg" in atlas and '<img class="thumb" src="../examples/t.png"' in atlas
    assert fig % "chelsea_0.jpg" in live and "thumb" not in live
    caption = "<figcaption>chelsea_0.jpg<br>mean 8.924</figcaption>"
    assert caption in atlas and caption in live
    # one pager; the explorer adds its links after it
    assert '<nav class="pager"><a href="channel_0002.html">&larr; previous</a> </nav>' in atlas
    assert (
        '<nav class="pager"><a href="/m/efficientnet_lite0/blocks.5/f/2">&larr; previous</a> '
        '<a href="/m/efficientnet_lite0/blocks.5/f/4">next &rarr;</a> · <a class="atlaslink"'
    ) in live
    # the render: a file in the atlas, the slot of its job in the explorer until it is done
    assert '<img class="big" src="channel_0003.png" alt="render of channel 3">' in atlas
    assert f'<div class="job" id="render" data-job="{RENDER_API.replace("&", "&amp;")}">' in live
    assert live.count('data-src="1" hidden alt="variant') == 2  # the diversity job's two slots


def test_one_stylesheet_and_the_script_served_by_the_explorer():
    from filterscope.serve.app import static

    css = stylesheet()
    assert b".hist .bar" in css and b".job progress" in css  # the atlas's rules and the explorer's
    with TestClient(Starlette(routes=[Route("/static/{name}", static)])) as c:
        for name in ("style.css", "serve.css"):  # serve.css: the old name, for pages still open
            r = c.get(f"/static/{name}")
            assert r.status_code == 200 and r.content == css and r.headers["content-type"].startswith("text/css")
        js = c.get("/static/live.js")
        assert js.status_code == 200 and "function fsPoll" in js.text and "javascript" in js.headers["content-type"]
        assert c.get("/static/base.html").status_code == 404


CONCEPT_CARD = {
    "concept": 0, "label": "crema", "stable": True, "importance": 1.0, "ablation_drop": 0.5, "stability": 1.0,
    "share": 0.1, "channels": [{"channel": 3, "weight": 0.5}],
    "crops": [{"url": "/png/a.png", "image": "i", "coefficient": 1}],
    "heat": [{"url": "/cmap/k/0/0.png", "photo": "/p"}], "votes": [{"name": "cup", "logit_rise": 1.0}],
}  # fmt: skip


def _class_page(renders) -> str:
    rec = {
        "method": "nmf", "n_concepts": 1, "seed": 0, "timings": {"total_s": 3.0},
        "fidelity": {"explained_variance": 0.3, "reconstruction_top1_agreement": 1.0},
        "data": {"class_images": 5, "images": 9, "averaged_over": "x"}, "stability": {"median": 0.9, "unstable": []},
    }  # fmt: skip
    ctx = {
        "live": True, "csrf": "t", "model_name": "efficientnet_lite0", "version": "0", "cache_dir": "/c",
        "atlas": False, "model_b_name": None, "layer": "bn2", "k": 967, "class_name": "espresso", "n_photos": 9,
        "n_concepts": 1, "api": "/api/concepts/efficientnet_lite0/bn2/967", "key": "k", "rec": rec,
        "render_api": "/api/concept-renders/efficientnet_lite0/bn2/967", "cards": [CONCEPT_CARD], "renders": renders,
    }  # fmt: skip
    return _explorer_env().get_template("class.html").render(**ctx)


def test_the_class_pages_render_slot_is_the_job_macro_wrapping_the_concept_cards():
    """Issue 44: "Render the concepts from noise" is ``sections.job`` with a body (the cards whose pictures it
    fills): its button, a hidden bar and an empty message above the cards, all inside the slot live.js polls;
    once rendered, the slot holds the cards alone with their pictures."""
    source = resources.files("filterscope.serve").joinpath("templates", "class.html").read_text()
    assert "<button" not in source and '<div class="job"' not in source  # nothing hand-written left
    page = _class_page(None)
    slot = page[page.index('<div class="job" id="renders"') :]
    head = (
        '<div class="job" id="renders" data-api="/api/concept-renders/efficientnet_lite0/bn2/967"><p><button '
        'type="button" onclick="var el = document.getElementById(\'renders\'); el.dataset.job = el.dataset.api; '
        'this.hidden = true; fsPoll(el);">Render the concepts from noise</button> <progress hidden></progress> '
        '<span class="msg"></span></p>'
    )
    assert slot.startswith(head), slot[:400]
    card = slot.index('<section class="concept" id="concept-0">')
    closes = slot.index("</section>")
    assert '<img class="mid" data-src="1" hidden alt="render of concept 0">' in slot[card:closes]
    assert slot[closes:].removeprefix("</section>").lstrip().startswith("</div>")  # the cards inside the slot
    done = _class_page(["/png/r0.png"])
    slot = done[done.index('<div class="job" id="renders"') :]
    assert slot.startswith('<div class="job" id="renders" data-api="/api/concept-renders/efficientnet_lite0/bn2/967">')
    assert "<button" not in done and "<progress" not in slot.split("</section>")[0]
    assert '<img class="mid" src="/png/r0.png" alt="render of concept 0">' in slot


def test_the_job_macro_without_a_body_draws_the_slot_alone():
    env = _explorer_env()
    draw = lambda call: env.from_string('{% import "_channel.html" as s %}' + call).render()
    assert draw('{{ s.job("/api/x", reload=true, steps=2) }}') == (
        '<div class="job" data-job="/api/x" data-reload="1"><progress max="2" value="0"></progress> '
        '<span class="msg">queued</span></div>'
    )
    assert draw('{{ s.job("/api/x", bar=false, msg="") }}') == (
        '<div class="job" data-job="/api/x"><progress hidden></progress> <span class="msg"></span></div>'
    )
    body = draw('{% call s.job("/api/x", id="j", start="Go") %}<img data-src="1" hidden>{% endcall %}')
    assert body.startswith('<div class="job" id="j" data-api="/api/x"><p><button') and body.endswith(
        '<span class="msg">queued</span></p>\n<img data-src="1" hidden></div>'
    )
    assert draw('{% call s.job("/api/x", controls=false) %}<b>done</b>{% endcall %}') == (
        '<div class="job" data-job="/api/x">\n<b>done</b></div>'
    )
