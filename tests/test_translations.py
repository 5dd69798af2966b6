"""The admin speaks five languages: complete, current, compiled catalogs, picked by the browser or the switch.

The compiled ``.mo`` files are part of the repository, so a machine without gettext serves every language;
these tests check that each one holds exactly what its ``.po`` says.
"""

import gettext
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import translation
from django.utils.translation import to_locale

from tests.conftest import require

BASE_DIR = Path(settings.BASE_DIR)
LOCALE_DIR = BASE_DIR / "locale"
LOCALES = [to_locale(code) for code, _name in settings.LANGUAGES]
# Passed to makemessages, here and in the instructions for translators.
MAKEMESSAGES_ARGS = [
    *(f"-l{locale}" for locale in LOCALES),
    "--ignore=.venv",
    "--ignore=node_modules",
    "--ignore=tests",
    "--ignore=bench",
]
# Not part of the source that makemessages reads (and large, or private).
NOT_SOURCE = {".git", ".venv", "node_modules", "tests", "bench", "data", "test-artifacts", ".env"}

PRINTF = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[diouxXeEfFgGcrsa%]")
NAMED = re.compile(r"%\([^)]*\)[#0\- +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[diouxXeEfFgGcrsa]")
BRACES = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}


@dataclass
class Entry:
    msgid: str = ""
    msgctxt: str | None = None
    msgid_plural: str | None = None
    msgstr: dict[int, str] = field(default_factory=dict)
    flags: set[str] = field(default_factory=set)
    obsolete: bool = False

    @property
    def key(self) -> tuple[str | None, str, str | None]:
        return (self.msgctxt, self.msgid, self.msgid_plural)

    @property
    def fuzzy(self) -> bool:
        return "fuzzy" in self.flags

    def label(self) -> str:
        return repr(self.msgid if self.msgctxt is None else f"{self.msgctxt}|{self.msgid}")


def _unquote(text: str) -> str:
    body = text.strip()
    assert body.startswith('"') and body.endswith('"'), f"not a PO string: {text!r}"
    return re.sub(r"\\(.)", lambda m: ESCAPES.get(m.group(1), m.group(1)), body[1:-1])


def parse_po(path: Path) -> list[Entry]:
    """Every entry of a PO file, the header (msgid "") first; enough of the format for makemessages."""
    entries: list[Entry] = []
    current = Entry()
    started = False
    target: tuple[str, int] | None = None

    def finish() -> None:
        nonlocal current, started, target
        if started:
            entries.append(current)
        current, started, target = Entry(), False, None

    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        obsolete = line.startswith("#~")
        if obsolete:
            line = line[2:].strip()
        if not line:
            finish()
            continue
        if line.startswith("#,"):
            if started and target is not None and target[0] == "msgstr":
                finish()
            current.flags |= {flag.strip() for flag in line[2:].split(",")}
            continue
        if line.startswith("#"):
            if started and target is not None and target[0] == "msgstr":
                finish()
            continue
        keyword, _, rest = line.partition(" ")
        if line.startswith('"'):
            assert target is not None, f"{path}: continuation line without a keyword: {raw!r}"
            name, index = target
            value = _unquote(line)
        else:
            if keyword in {"msgctxt", "msgid"} and started and target is not None and target[0] == "msgstr":
                finish()
            started = True
            current.obsolete = current.obsolete or obsolete
            match = re.fullmatch(r"msgstr\[(\d+)\]", keyword)
            name, index = ("msgstr", int(match.group(1))) if match else (keyword, 0)
            assert name in {"msgctxt", "msgid", "msgid_plural", "msgstr"}, f"{path}: unknown line {raw!r}"
            target = (name, index)
            value = _unquote(rest)
            if name == "msgctxt":
                current.msgctxt = ""
            elif name == "msgid_plural":
                current.msgid_plural = ""
            elif name == "msgstr":
                current.msgstr.setdefault(index, "")
        if name == "msgctxt":
            current.msgctxt = (current.msgctxt or "") + value
        elif name == "msgid":
            current.msgid += value
        elif name == "msgid_plural":
            current.msgid_plural = (current.msgid_plural or "") + value
        else:
            current.msgstr[index] += value
    finish()
    return entries


def po_path(locale: str, root: Path = LOCALE_DIR) -> Path:
    return root / locale / "LC_MESSAGES" / "django.po"


def messages(locale: str, root: Path = LOCALE_DIR) -> list[Entry]:
    """The translatable entries of a catalog: everything but the header."""
    return [entry for entry in parse_po(po_path(locale, root)) if entry.msgid or entry.msgctxt is not None]


def header(locale: str) -> dict[str, str]:
    first = parse_po(po_path(locale))[0]
    assert first.msgid == "" and first.msgctxt is None, f"{locale}: the catalog has no header"
    lines = [line.partition(":") for line in first.msgstr[0].splitlines() if line]
    return {name.strip(): value.strip() for name, _, value in lines}


def nplurals(locale: str) -> int:
    match = re.search(r"nplurals\s*=\s*(\d+)", header(locale).get("Plural-Forms", ""))
    assert match, f"{locale}: the header has no Plural-Forms"
    return int(match.group(1))


def placeholders(text: str, python_format: bool) -> Counter[str]:
    found = PRINTF.findall(text) if python_format else NAMED.findall(text)
    return Counter(found + BRACES.findall(text))


def source_copy(destination: Path) -> None:
    """The project's source and catalogs, as makemessages sees them, without virtualenvs or data."""
    destination.mkdir()
    for item in BASE_DIR.iterdir():
        if item.name in NOT_SOURCE or item.name.startswith("."):
            continue
        if item.is_dir():
            shutil.copytree(item, destination / item.name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(item, destination / item.name)


def test_every_configured_language_has_a_catalog():
    assert sorted(LOCALES) == sorted(["en", "zh_Hans", "zh_Hant", "ja", "ru"])
    present = sorted(path.parent.parent.name for path in LOCALE_DIR.glob("*/LC_MESSAGES/django.po"))
    assert present == sorted(LOCALES)


def test_every_catalog_holds_the_same_messages():
    keys = {locale: sorted(entry.key for entry in messages(locale)) for locale in LOCALES}
    reference = keys["en"]
    assert reference, "the catalogs are empty"
    for locale, found in keys.items():
        assert found == reference, f"{locale} and en disagree: {set(found) ^ set(reference)}"


@pytest.mark.parametrize("locale", LOCALES)
def test_every_message_is_translated(locale):
    # en is translated like the others (msgstr equal to msgid, or a copy edit): one rule for five catalogs,
    # and an English text that reads right does not depend on an empty msgstr falling through.
    forms = nplurals(locale)
    untranslated = []
    for entry in messages(locale):
        expected = set(range(forms)) if entry.msgid_plural is not None else {0}
        if set(entry.msgstr) != expected or not all(entry.msgstr.values()):
            untranslated.append(entry.label())
    assert not untranslated, f"{locale}: untranslated messages: {untranslated}"


@pytest.mark.parametrize("locale", LOCALES)
def test_no_fuzzy_or_obsolete_entries(locale):
    entries = parse_po(po_path(locale))
    assert not [entry.label() for entry in entries if entry.fuzzy], f"{locale}: fuzzy entries"
    assert not [entry.label() for entry in entries if entry.obsolete], f"{locale}: obsolete entries"


@pytest.mark.parametrize("locale", LOCALES)
def test_header_names_the_language(locale):
    fields = header(locale)
    assert fields.get("Language", "").replace("-", "_").lower() == locale.lower()
    assert fields.get("Content-Type") == "text/plain; charset=UTF-8"


@pytest.mark.parametrize("locale", LOCALES)
def test_translations_keep_the_placeholders(locale):
    wrong = []
    for entry in messages(locale):
        python_format = "python-format" in entry.flags
        for index, text in entry.msgstr.items():
            source = entry.msgid if index == 0 or entry.msgid_plural is None else entry.msgid_plural
            if placeholders(text, python_format) != placeholders(source, python_format):
                wrong.append(f"{entry.label()} -> {text!r}")
    assert not wrong, f"{locale}: placeholders differ: {wrong}"


def test_the_placeholder_check_notices_a_mismatch():
    assert placeholders("%(name)s: %(ms).0f ms", True) == placeholders("%(ms).0f мс %(name)s", True)
    assert placeholders("%(name)s", True) != placeholders("%(nom)s", True)
    assert placeholders("Test of %(name)s", False) != placeholders("Test", False)
    assert placeholders("100%% %s", True) != placeholders("100%%", True)


def test_the_parser_reads_contexts_plurals_flags_and_continuations(tmp_path):
    path = po_path("xx", tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(
        'msgid ""\nmsgstr ""\n"Language: xx\\n"\n\n'
        '#: a.py:1\n#, fuzzy, python-format\nmsgctxt "menu"\nmsgid ""\n"Open %(name)s"\nmsgstr "Ouvrir"\n\n'
        'msgid "one \\"file\\""\nmsgid_plural "%(n)s files"\nmsgstr[0] "un"\nmsgstr[1] ""\n\n'
        '#~ msgid "gone"\n#~ msgstr "parti"\n',
        encoding="utf-8",
    )
    first, context, plural, gone = parse_po(path)
    assert first.msgstr == {0: "Language: xx\n"}
    assert (context.msgctxt, context.msgid, context.fuzzy) == ("menu", "Open %(name)s", True)
    assert plural.key == (None, 'one "file"', "%(n)s files") and plural.msgstr == {0: "un", 1: ""}
    assert gone.obsolete and not plural.obsolete


@pytest.mark.parametrize("locale", LOCALES)
def test_compiled_catalog_matches_its_source(locale):
    # Compared by content: git does not keep modification times, so "older than the .po" means nothing
    # after a checkout, while a .mo that says something else than its .po always matters.
    mo = po_path(locale).with_suffix(".mo")
    assert mo.exists(), f"{mo} is missing: run `manage.py compilemessages`"
    with mo.open("rb") as handle:
        compiled = dict(gettext.GNUTranslations(handle)._catalog)  # type: ignore[attr-defined]
    compiled.pop("", None)
    expected: dict[object, str] = {}
    for entry in messages(locale):
        if entry.fuzzy or not all(entry.msgstr.values()):
            continue
        msgid = entry.msgid if entry.msgctxt is None else f"{entry.msgctxt}\x04{entry.msgid}"
        if entry.msgid_plural is None:
            expected[msgid] = entry.msgstr[0]
        else:
            expected.update({(msgid, index): text for index, text in entry.msgstr.items()})
    stale = sorted(str(key) for key in set(compiled) ^ set(expected)) + sorted(
        str(key) for key in set(compiled) & set(expected) if compiled[key] != expected[key]
    )
    assert not stale, f"{mo} differs from its .po (run `manage.py compilemessages`): {stale[:10]}"


@pytest.mark.parametrize(("code", "locale"), [(code, to_locale(code)) for code, _ in settings.LANGUAGES])
def test_django_serves_every_translation(code, locale):
    with translation.override(code):
        for entry in messages(locale):
            if entry.msgctxt is None and entry.msgid_plural is None:
                assert translation.gettext(entry.msgid) == entry.msgstr[0], f"{code}: {entry.label()}"


def test_catalogs_are_up_to_date_with_the_source(tmp_path):
    tools = ("xgettext", "msgmerge", "msguniq", "msgattrib")
    require(all(shutil.which(tool) for tool in tools), "gettext is not installed (apt-get install gettext)")
    copy = tmp_path / "src"
    source_copy(copy)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "SLUICE_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "manage.py", "makemessages", *MAKEMESSAGES_ARGS],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    command = "python manage.py makemessages " + " ".join(MAKEMESSAGES_ARGS)
    for locale in LOCALES:
        current = {entry.key for entry in messages(locale)}
        fresh = {entry.key for entry in messages(locale, copy / "locale")}
        assert current == fresh, (
            f"locale/{locale} is out of date with the source; run `{command}` and translate. "
            f"New: {sorted(map(str, fresh - current))} Gone: {sorted(map(str, current - fresh))}"
        )


def test_admin_login_page_follows_accept_language(client):
    response = client.get("/admin/login/", HTTP_ACCEPT_LANGUAGE="ja")
    assert response.status_code == 200
    html = response.content.decode()
    assert '<html lang="ja"' in html
    assert "Sluice 管理" in html  # the project's catalog
    assert "ログイン" in html  # Django's own admin catalog
    assert "Sluice administration" not in html


def test_language_switch_turns_the_admin_russian(admin_client):
    english = admin_client.get("/admin/").content.decode()
    assert "Sluice administration" in english and 'id="sluice-language-select"' in english
    response = admin_client.post("/i18n/setlang/", {"language": "ru", "next": "/admin/"})
    assert response.status_code == 302 and response["Location"] == "/admin/"
    assert admin_client.cookies[settings.LANGUAGE_COOKIE_NAME].value == "ru"
    html = admin_client.get("/admin/").content.decode()
    assert '<html lang="ru"' in html
    for text in ("Администрирование Sluice", "Провайдеры", "Шлюз", "Системные настройки"):
        assert text in html
    assert "Sluice administration" not in html
