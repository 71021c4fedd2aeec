"""The default quality classifier: a toy-sized model built at first use from text every Python install has.

    path = ensure_default_quality_model()     # ~/.cache/scratchlm/models/quality-default-v1/ (built once, ~20 s)
    classify_quality(text)                   # uses it when no model is given and $SCRATCHLM_QUALITY_MODEL is unset
    scratchlm data quality default           # build it if needed; print what it was trained on and how good it is

What it is. The project's own hashed n-gram classifier (`quality_model.train_quality_model`), trained on:
- positives ("hq"): edited English prose that ships with CPython itself, so it is there offline on every
  machine: the Python Language Reference sections in `pydoc_data.topics` and the prose paragraphs of the
  standard library's docstrings (read with `ast`, never imported), cut into documents of 40-250 words;
- negatives ("lq"): web boilerplate and spam synthesised here from the patterns a filter meets after text
  extraction: navigation menus, cookie and legal notices, SEO keyword lists, link lists and tag clouds,
  product listings, ads, archive and pagination lists, share/subscribe prompts, comment spam, and word
  salad made of the positives' own words (so topic words alone do not decide).
Its meta.json states both sources, the counts, the held-out accuracy on documents of the same generators
(optimistic), and the accuracy on a small hand-written probe set of other kinds of prose and spam that
neither generator made (`PROBES`), which is the fairer number.

Its limits, plainly: the positives are technical documentation about one subject, and the negatives are
what a few hundred lines of templates can make; real web text is more varied than either. It tells
prose from boilerplate; it does not judge whether prose is good, true, or on topic, and it has never
seen real Common Crawl pages. Use it to try a pipeline; for a real corpus train one on your own data
(trusted pages vs random crawl, as `quality_model.py` describes) with `scratchlm data quality train`.
"""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import os
import random
import re
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from scratchlm.errors import ScratchLMError

log = logging.getLogger(__name__)

NAME = "quality-default-v1"  # bump when the data or the recipe changes: caches are then rebuilt
TRAIN_COMMAND = "scratchlm data quality train --positive GOOD.jsonl --negative RANDOM_WEB.jsonl --out DIR"
SKIP_DIRS = {"test", "tests", "idle_test", "lib2to3", "site-packages", "dist-packages", "__pycache__"}
_FUNCTION_WORDS = set("the a an of to in is are be that this it for with as by on or and not which can".split())
_WORD = re.compile(r"[A-Za-z]+")


def default_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    from scratchlm.data.download import scratchlm_home

    home = Path(cache_dir).expanduser() if cache_dir is not None else scratchlm_home()
    return home / "models" / NAME


# ---------------------------------------------------------------------------------------------- positives


def _prose(paragraph: str) -> str | None:
    """The paragraph as one line if it reads as prose (not code, grammar, a table or a list of names)."""
    lines = paragraph.splitlines()
    if any(line.startswith(("   ", "\t", ">>>", "...")) or "::=" in line for line in lines):
        return None
    if any(set(line.strip()) <= set("*=-~^+|") for line in lines if line.strip()):  # headings, tables
        return None
    words = paragraph.split()
    alpha = _WORD.findall(paragraph)
    if len(words) < 12 or len(alpha) < 0.8 * len(words):
        return None
    if sum(w.lower() in _FUNCTION_WORDS for w in alpha) < 0.15 * len(alpha):  # lists of names, not sentences
        return None
    return " ".join(words)


def _paragraphs(text: str) -> list[str]:
    return [p for p in (_prose(block) for block in re.split(r"\n\s*\n", text)) if p]


def _documents(paragraphs: list[str], rng: random.Random, lo: int = 40, hi: int = 250) -> list[str]:
    """Consecutive paragraphs joined into documents of lo..hi words (a target drawn per document)."""
    docs, cur, n, target = [], [], 0, rng.randint(lo, hi)
    for p in paragraphs:
        cur.append(p)
        n += len(p.split())
        if n >= target:
            docs.append("\n\n".join(cur))
            cur, n, target = [], 0, rng.randint(lo, hi)
    if n >= lo:
        docs.append("\n\n".join(cur))
    return docs


def positive_documents(seed: int = 0) -> tuple[list[str], dict]:
    """(documents, where they came from) of prose shipped with this Python."""
    rng = random.Random(seed)
    sources = {}
    docs = []
    try:
        from pydoc_data.topics import topics  # the Language Reference, as `help()` shows it
    except ImportError:  # some distributions split it off
        topics = {}
    for name in sorted(topics):
        docs += _documents(_paragraphs(topics[name]), rng)
    sources["pydoc_data.topics"] = len(docs)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.rglob("*.py") if not SKIP_DIRS & set(p.relative_to(stdlib).parts))
    for path in files:
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError):
            continue
        paras = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                paras += _paragraphs(ast.get_docstring(node) or "")
        docs += _documents(paras, rng)
    sources["standard library docstrings"] = len(docs) - sources["pydoc_data.topics"]
    sources["python"] = sys.version.split()[0]
    return docs, sources


# ---------------------------------------------------------------------------------------------- negatives

BRANDS = "Nexora Brightlane Vantix Lumio Crestwell Zentro Orbix Maplecore Kitefield Solvane Trivio Bluepeak".split()
PRODUCTS = [
    "wireless earbuds", "running shoes", "coffee maker", "phone case", "gaming chair", "led strip lights",
    "yoga mat", "air fryer", "smart watch", "travel backpack", "desk lamp", "water bottle", "face serum",
    "car charger", "robot vacuum", "standing desk", "hair dryer", "protein powder", "bluetooth speaker",
]  # fmt: skip
SERVICES = [
    "plumber", "dentist", "lawyer", "roof repair", "seo agency", "web design", "car insurance", "payday loans",
    "locksmith", "movers", "weight loss", "crypto trading", "online casino", "cheap flights", "home loans",
]  # fmt: skip
CITIES = "New York, London, Chicago, Toronto, Sydney, Dallas, Manchester, Austin, Denver, Leeds, Miami".split(", ")
MENU = [
    "Home", "About Us", "Services", "Blog", "Contact", "Login", "Register", "Cart (0)", "My Account", "FAQ",
    "Shop", "News", "Careers", "Support", "Pricing", "Gallery", "Events", "Downloads", "Sitemap", "Search",
]  # fmt: skip
NOTICE = [
    "We use cookies to improve your experience on our website.",
    "By continuing to browse the site you agree to our use of cookies.",
    "Accept all cookies", "Manage preferences", "Reject non-essential", "Cookie settings",
    "This site uses cookies and similar technologies for analytics and personalised advertising.",
    "Privacy Policy", "Terms of Service", "Terms and Conditions", "Do Not Sell My Personal Information",
    "All rights reserved.", "Powered by WordPress", "Back to top", "Skip to main content",
    "Your browser is out of date. Please update your browser for the best experience.",
    "JavaScript is disabled in your browser. Please enable JavaScript to continue.",
    "You must be logged in to post a comment.", "Sign in to continue reading.",
]  # fmt: skip
SHARE = [
    "Share on Facebook", "Tweet", "Pin it", "Email", "Share on LinkedIn", "WhatsApp", "Copy link",
    "Subscribe to our newsletter", "Enter your email address", "Sign up", "Follow us on Instagram",
    "Like us on Facebook", "Join 10,000+ subscribers", "Get the latest deals straight to your inbox",
    "Download our app", "Available on the App Store", "Get it on Google Play",
]  # fmt: skip
ADS = [
    "CLICK HERE", "Limited time offer!", "Act now!!!", "Buy now", "Order today and save 50%", "Free shipping",
    "You have been selected", "Claim your prize", "100% guaranteed", "No credit check", "Earn money from home",
    "Hot deal", "Best price online", "Lowest price guaranteed", "Call now", "Only 3 left in stock", "Sale ends soon",
]  # fmt: skip
COMMENTS = [
    "nice post thanks for sharing", "great article, I will bookmark your blog", "very informative, keep it up",
    "thanks admin", "I learned a lot from this, check out my site too", "awesome content!!!", "first",
    "who is watching in 2024", "this is exactly what I was looking for", "can you do a post about",
    "Reply", "Report", "Like", "Load more comments", "Posted by admin", "0 comments", "Leave a reply",
]  # fmt: skip
MONTHS = "January February March April May June July August September October November December".split()


def _topic(rng: random.Random, vocab: list[str], k: int) -> str:
    return " ".join(rng.choice(vocab) for _ in range(k))


def _title(rng: random.Random, vocab: list[str]) -> str:
    return _topic(rng, vocab, rng.randint(2, 6)).title()


def _price(rng: random.Random) -> str:
    return f"${rng.randint(5, 499)}.{rng.choice(['99', '95', '49', '00'])}"


def _block(kind: str, rng: random.Random, vocab: list[str]) -> str:
    """One block of web boilerplate of the given kind."""
    r = rng
    if kind == "menu":
        items = r.sample(MENU, r.randint(5, 12)) + [_title(r, vocab) for _ in range(r.randint(0, 6))]
        return r.choice([" | ", " · ", "\n", "  ", " / "]).join(items)
    if kind == "notice":
        parts = r.sample(NOTICE, r.randint(3, 8)) + [f"© {r.randint(2005, 2025)} {r.choice(BRANDS)} Inc."]
        r.shuffle(parts)
        return r.choice([" ", "\n", " | "]).join(parts)
    if kind == "seo":
        kw = [r.choice(PRODUCTS + SERVICES) for _ in range(3)] + [_topic(r, vocab, 1) for _ in range(2)]
        forms = ["best {k} {y}", "cheap {k}", "{k} near me", "buy {k} online", "top 10 {k}", "{k} reviews", "{k} {c}",
                 "free {k}", "{k} deals", "{k} for sale", "affordable {k} in {c}", "{k} discount code"]  # fmt: skip
        phrases = [
            r.choice(forms).format(k=r.choice(kw), y=r.randint(2018, 2025), c=r.choice(CITIES))
            for _ in range(r.randint(8, 30))
        ]
        return r.choice([", ", " | ", " ", "\n"]).join(phrases)
    if kind == "links":
        head = r.choice(["Related posts:", "Tags:", "Categories:", "Popular searches:", "See also:", "Read more:"])
        links = [_title(r, vocab) for _ in range(r.randint(5, 20))]
        tail = r.choice(["", " Read more »", " View all", " Load more", " »"])
        return head + " " + r.choice([", ", " | ", "\n", " · "]).join(links) + tail
    if kind == "products":
        rows = []
        for _ in range(r.randint(3, 10)):
            name = f"{r.choice(BRANDS)} {r.choice(PRODUCTS).title()} {r.choice(['Pro', 'Max', 'X2', 'Lite', '2024'])}"
            stars = "★" * (n := r.randint(2, 5)) + "☆" * (5 - n)
            status = r.choice(["Add to cart", "In stock", "Out of stock", "Free shipping", "Quick view"])
            rows.append(
                f"{name} {_price(r)} {r.choice(['', _price(r)])} {stars} ({r.randint(3, 9000)} reviews) {status}"
            )
        return "\n".join(rows)
    if kind == "ads":
        parts = r.sample(ADS, r.randint(3, 8))
        parts.insert(r.randrange(len(parts)), f"{r.choice(PRODUCTS + SERVICES)} only {_price(r)}")
        parts.append(f"Call {r.randint(200, 999)}-{r.randint(100, 999)}-{r.randint(1000, 9999)}")
        return r.choice([" ", "!!! ", " - ", "\n"]).join(parts)
    if kind == "archive":
        y = r.randint(2010, 2024)
        months = [f"{m} {y - i // 12} ({r.randint(1, 30)})" for i, m in enumerate(r.sample(MONTHS, r.randint(4, 12)))]
        pages = " ".join(str(i) for i in range(1, r.randint(4, 9))) + f" ... {r.randint(10, 99)}"
        return "Archives " + " ".join(months) + f" « Previous {pages} Next »"
    if kind == "share":
        return r.choice([" ", " | ", "\n"]).join(r.sample(SHARE, r.randint(4, 10)))
    if kind == "comments":
        rows = []
        for _ in range(r.randint(3, 9)):
            who = r.choice(["admin", "john", "sarah_k", "guest", "cheapdeals", "mike88"])
            date = f"{r.choice(MONTHS)} {r.randint(1, 28)}, {r.randint(2012, 2024)}"
            rows.append(f"{who} says: {date} at {r.randint(1, 12)}:{r.randint(10, 59)} pm {r.choice(COMMENTS)}")
        return "\n".join(rows)
    if kind == "salad":  # spun or machine-made text: the positives' words without their syntax
        words = [_topic(r, vocab, 1) for _ in range(r.randint(30, 150))]
        return " ".join(w.capitalize() if i % r.randint(5, 15) == 0 else w for i, w in enumerate(words))
    raise ValueError(kind)


KINDS = ("menu", "notice", "seo", "links", "products", "ads", "archive", "share", "comments", "salad")


def negative_documents(n: int, vocab: list[str], seed: int = 0) -> list[str]:
    """`n` synthetic low-quality pages: each 1-4 blocks of boilerplate kinds, as extraction leaves them."""
    rng = random.Random(seed)
    return ["\n".join(_block(rng.choice(KINDS), rng, vocab) for _ in range(rng.randint(1, 4))) for _ in range(n)]


# ---------------------------------------------------------------------------------------------- probes

# Hand-written, of kinds neither generator makes: other subjects of prose, and spam in other words. Small, and
# written by the same author as the generators: a sanity check of how the model carries over, not a benchmark.
# The last four of each label are the hard cases: prose about shopping, short or chatty prose; spam written
# in whole sentences (SEO filler, a scam letter).
PROBES = [
    ("hq", "The council voted on Monday to extend the bus route to the new hospital. Residents had asked for the "
           "change for two years, and the vote passed by a wide margin after a long debate about its cost."),
    ("hq", "Whisk the eggs with the sugar until the mixture is pale, then fold in the flour a little at a time. "
           "Bake for twenty minutes, or until a knife pushed into the centre comes out clean."),
    ("hq", "When the glaciers retreated at the end of the last ice age, they left behind a landscape of lakes and "
           "gravel ridges. Farmers later cleared the stones to build the walls that still divide the fields."),
    ("hq", "She had not expected the letter to arrive so soon. For a long time she held it unopened, listening to "
           "the rain against the window and wondering what her brother could have decided to say."),
    ("hq", "Vaccines train the immune system to recognise a virus without causing the disease. Because the body "
           "remembers the encounter, it can respond quickly if it meets the real infection later."),
    ("hq", "The museum's new wing houses a collection of maps drawn by sailors in the sixteenth century. Many of "
           "them show coastlines that had never been surveyed, sketched from memory after long voyages."),
    ("hq", "To replace a bicycle tyre, first release the brake and remove the wheel. Push one side of the tyre "
           "into the centre of the rim, and the rest will come off easily with a tyre lever."),
    ("hq", "Economists disagree about why productivity grew so slowly in the decade after the financial crisis. "
           "Some point to weak investment, while others argue that the statistics miss much of what is produced."),
    ("lq", "Home | Shop | Deals | Contact | Login | Cart. Sign up for our newsletter and get 10% off your first "
           "order! Follow us on social media. Copyright 2023. All rights reserved. Privacy | Terms"),
    ("lq", "cheap hotels paris, cheap hotels paris france, best cheap hotels paris, hotels paris cheap deals, "
           "cheap hotel paris booking, paris hotels cheap price, discount hotels paris"),
    ("lq", "WIN A FREE GIFT CARD!!! Click the button below to claim your reward now. Offer valid today only. "
           "Hurry, limited spots available! Enter your details to continue."),
    ("lq", "Posted in Uncategorized | Leave a comment. Older posts. Recent Posts: Hello world! Meta: Log in, "
           "Entries feed, Comments feed, WordPress.org. Proudly powered by WordPress."),
    ("lq", "Samsung Galaxy Case Black $12.99 Add to Cart. iPhone Charger Cable 2-pack $8.49 Add to Cart. "
           "USB Hub 4 Port $15.99 Sold Out. Showing 1-24 of 380 results. Sort by: Popularity"),
    ("lq", "thank you so much!! this helped me a lot. visit my page for more tips. Reply. great post admin "
           "keep going. Reply. nice. Reply. Load more comments."),
    ("lq", "This website uses cookies. We use cookies to personalise content and ads, to provide social media "
           "features and to analyse our traffic. Allow all. Deny. Customize. Show details."),
    ("hq", "I bought these boots for a walking holiday in Scotland. They were comfortable from the first day, "
           "although the laces wore out quickly, and they kept my feet dry through a week of rain."),
    ("hq", "Prices at the market rose again this month. A kilo of tomatoes now costs almost twice what it did "
           "last spring, and several stall holders say they may not reopen after the winter."),
    ("hq", "Honestly, the easiest fix is to restart the router and wait a minute before you reconnect. If that "
           "does not help, it is worth calling your provider, because the fault may be on their side."),
    ("hq", "The bridge was closed for repairs."),
    ("lq", "Are you looking for the best running shoes? In this article we will tell you everything you need to "
           "know about the best running shoes. The best running shoes are very good. Keep reading to find out "
           "which running shoes are the best running shoes for you in 2024!"),
    ("lq", "Dear friend, I am a banker and I have an inheritance of 4.5 million dollars for you. Please send me "
           "your full name, your bank account and your phone number so that we can transfer the money today."),
    ("lq", "Buy Viagra online without prescription. Cheap Viagra. Viagra 100mg price. Generic Viagra fast "
           "delivery. Order Viagra now and get free pills. Best Viagra pharmacy online."),
    ("lq", "Click to read more. Loading... Please wait. Error 404. The page you are looking for could not be "
           "found. Go back to the homepage or try searching again."),
    ("lq", "Best Lawyer in Dallas | Top Rated Dallas Lawyer | Affordable Dallas Attorney | Call Now for a Free "
           "Consultation | Dallas Lawyer Near Me | 24/7 Service"),
]  # fmt: skip


# ---------------------------------------------------------------------------------------------- build


@contextlib.contextmanager
def _build_lock(path: Path):
    """Wait for the other process building the same model (an OS lock: released if its holder dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        with contextlib.suppress(ImportError):
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def build_default_quality_model(out: Path, seed: int = 0, log_fn=None) -> dict:
    """Train the default model into `out` (replacing it); returns its meta.json."""
    from scratchlm.data.quality_model import QualityTrainConfig, evaluate, train_quality_model

    say = log_fn or log.info
    t0 = time.perf_counter()
    pos, sources = positive_documents(seed)
    if len(pos) < 200:
        raise ScratchLMError(
            f"cannot build the default quality model: this Python ships too little documentation prose "
            f"({len(pos)} documents); train one on your own data with `{TRAIN_COMMAND}`"
        )
    vocab = sorted({w.lower() for d in pos for w in _WORD.findall(d) if len(w) >= 4})
    neg = negative_documents(len(pos), vocab, seed)
    cfg = QualityTrainConfig(buckets=1 << 17, dim=16, epochs=4, valid_fraction=0.2, seed=seed)
    with tempfile.TemporaryDirectory(prefix="scratchlm-quality-") as tmp:
        files = []
        for name, docs in (("positive", pos), ("negative", neg)):
            files.append(Path(tmp) / f"{name}.jsonl")
            files[-1].write_text("".join(json.dumps({"text": t}) + "\n" for t in docs), encoding="utf-8")
        model = train_quality_model(files[:1], files[1:], cfg, log=lambda s: log.debug("%s", s))
    probes = evaluate(model, [t for _, t in PROBES], [label for label, _ in PROBES], cfg.positive_label)
    model.meta.update(
        {
            "name": NAME,
            "positive_sources": [
                f"pydoc_data.topics of Python {sources['python']} (Language Reference): "
                f"{sources['pydoc_data.topics']} documents",
                f"prose paragraphs of Python {sources['python']} standard-library docstrings: "
                f"{sources['standard library docstrings']} documents",
            ],
            "negative_sources": [
                f"{len(neg)} synthetic pages of web boilerplate and spam ({', '.join(KINDS)}), "
                "made by scratchlm.data.default_quality"
            ],
            "held_out": {
                **model.meta["valid"],
                "note": "a random 20% of the documents, made by the same sources and generators: optimistic",
            },
            "probes": {**probes, "note": "hand-written texts of other kinds (default_quality.PROBES)"},
            "limits": (
                "Toy-sized default. Positives are Python documentation (one subject), negatives are templated "
                "boilerplate; it separates prose from boilerplate, not good prose from bad, and has never seen real "
                "crawl data. For real use train one on your data: " + TRAIN_COMMAND
            ),
            "build_seconds": round(time.perf_counter() - t0, 1),
        }
    )
    model.save(out, overwrite=True)
    say(
        f"built the default quality model {out}: held-out accuracy {model.meta['valid']['accuracy']:.3f} "
        f"(same generators), probes {probes['accuracy']:.3f} ({probes['documents']} hand-written texts)"
    )
    return model.meta


def ensure_default_quality_model(cache_dir: str | os.PathLike | None = None, rebuild: bool = False) -> Path:
    """The default model's directory, built on first use (~20 s; see the module docstring) and cached."""
    from scratchlm.io import check_writable

    out = default_model_dir(cache_dir)
    if not rebuild and (out / "meta.json").is_file() and (out / "model.safetensors").is_file():
        return out
    check_writable(out, "default quality model")
    with _build_lock(out):
        if rebuild or not (out / "meta.json").is_file():  # another process may have built it meanwhile
            log.warning("building the default quality model (first use, about 20 s): %s", out)
            build_default_quality_model(out)
    return out
