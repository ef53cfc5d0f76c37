"""Caption metrics as the field reports them: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (and SPICE) on PTB-tokenized text.

The reference implementation is pycocoevalcap (the COCO caption evaluation code): it lower-cases and tokenizes every
caption with Stanford CoreNLP 3.4.1's PTBTokenizer (Java), drops punctuation tokens, and scores with its own BLEU,
ROUGE-L and CIDEr-D code plus the METEOR 1.5 and SPICE 1.0 jars. This module reproduces the tokenizer and the three
pure scorers in Python (same numbers to 1e-6, no Java), and runs the METEOR/SPICE jars that pycocoevalcap ships when
Java and the jars are present. A metric that cannot be computed is reported as ``None`` with a warning, never as 0.

Public API: :func:`compute_caption_metrics`, :func:`human_agreement`, :func:`ptb_tokenize`,
:class:`CaptionMetricWarning`.
"""

import functools
import importlib.util
import math
import re
import shutil
import subprocess
import threading
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["CaptionMetricWarning", "compute_caption_metrics", "human_agreement", "ptb_tokenize"]

METRIC_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D")


class CaptionMetricWarning(UserWarning):
    """A caption metric was computed in a way that makes it incomparable with published numbers, or not at all."""


# ----------------------------------------------------------------------------------------------------------------
# PTB tokenization
#
# pycocoevalcap/tokenizer/ptbtokenizer.py runs `java edu.stanford.nlp.process.PTBTokenizer -preserveLines
# -lowerCase` (CoreNLP 3.4.1) over all captions joined by newlines, then drops the tokens in its PUNCTUATIONS list.
# PTBTokenizer is a JFlex scanner (PTBLexer.flex): at each position the rule with the longest match wins (trailing
# context counts towards the length), ties go to the earlier rule. Below is that scanner re-built from the rules of
# PTBLexer.flex as CoreNLP 3.4.1 has them (checked rule by rule against the jar, then fuzzed against it with tens of
# thousands of random and adversarial lines). Known differences (none occur in ordinary captions):
# - Context across captions: the jar sees the next caption after a newline; we tokenize each caption as if it were
#   followed by a newline and a lower-case word. So a caption ending in a single-letter acronym ("vitamin C.") keeps
#   "c." where the jar gives "c" if the next caption starts with e.g. "A " or "The "; the last caption of the jar's
#   input sits at end of file, where e.g. a final ":)" is not a smiley for the jar.
# - Unicode: the jar's character classes date from Unicode 6 (2014); letters added later (e.g. U+037F) are letters
#   here and deleted there. Characters outside the BMP (emoji) are deleted by both.
# - Lower-casing: Java decides whether a capital sigma is word-final with a word BreakIterator; we approximate it
#   (words of letters and digits), which only matters for Greek text.
# - pycocoevalcap only replaces "\n" in captions; "\r", U+2028/U+2029, "\v" and "\f" end a line for the jar and
#   misalign every later caption (a pycocoevalcap bug). We treat them as spaces.
# ----------------------------------------------------------------------------------------------------------------

# pycocoevalcap/tokenizer/ptbtokenizer.py PUNCTUATIONS: compared with the lower-cased tokens, so "-lrb-" (from "(")
# and "-lsb-" survive, while "''", "--", "..." and friends go.
PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)


def _char_class(predicate) -> str:
    """A regex character class of the BMP code points satisfying ``predicate`` (JFlex 1.4 saw UTF-16 units only)."""
    ranges, start = [], None
    for code in range(0x10000):
        ok = not 0xD800 <= code <= 0xDFFF and predicate(chr(code))
        if ok and start is None:
            start = code
        elif not ok and start is not None:
            ranges.append((start, code - 1))
            start = None
    if start is not None:
        ranges.append((start, 0xFFFF))
    return "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges)


@functools.cache
def _ptb_rules() -> list[tuple[re.Pattern, bool, str]]:
    """PTBLexer's rules in priority order: (compiled pattern, has trailing context, action).

    A rule with trailing context ``r1/r2`` is compiled as ``(r1)(?:r2)``: group 1 is the token, the whole match is
    what competes for the longest match. JFlex's ``%caseless`` makes literal letters match either case but leaves
    character classes alone, hence the ``(?i:...)`` around literals and the bare classes like ``[A]``.
    """
    letters = _char_class(str.isalpha)  # Java Character.isLetter: categories Lu Ll Lt Lm Lo
    digits = _char_class(str.isdecimal)  # Java Character.isDigit: category Nd
    L = f"[{letters}]"  # [:letter:]
    LD = f"[{letters}{digits}]"  # [:letter:]|[:digit:]
    D = f"[{digits}\u07c0-\u07c9]"  # DIGIT
    # LETTER: [:letter:], SPLET (&eacute; ...) and the ranges PTBLexer.flex adds (soft hyphen, combining marks, ...)
    LETTER = (
        f"(?:[{letters}\u00ad\u0237-\u024f\u02c2-\u02c5\u02d2-\u02df\u02e5-\u02ff\u0300-\u036f\u0370-\u037d\u0384"
        "\u0385\u03cf\u03f6\u03fc-\u03ff\u0483-\u0487\u04cf\u04f6-\u04ff\u0510-\u0525\u055a-\u055f\u0591-\u05bd"
        "\u05bf\u05c1\u05c2\u05c4\u05c5\u05c7\u0615-\u061a\u063b-\u063f\u064b-\u065e\u0670\u06d6-\u06ef\u06fa-\u06ff"
        "\u070f\u0711\u0730-\u074f\u0750-\u077f\u07a6-\u07b1\u07ca-\u07f5\u07fa\u0900-\u0903\u093c\u093e-\u094e"
        "\u0951-\u0955\u0962-\u0963\u0981-\u0983\u09bc-\u09c4\u09c7\u09c8\u09cb-\u09cd\u09d7\u09e2\u09e3\u0a01-\u0a03"
        "\u0a3c\u0a3e-\u0a4f\u0a81-\u0a83\u0abc-\u0acf\u0b82\u0bbe-\u0bc2\u0bc6-\u0bc8\u0bca-\u0bcd\u0c01-\u0c03"
        "\u0c3e-\u0c56\u0d3e-\u0d44\u0d46-\u0d48\u0e30-\u0e3a\u0e47-\u0e4e\u0eb1-\u0ebc\u0ec8-\u0ecd]"
        "|&[aeiouAEIOU](?:acute|grave|uml);)"
    )
    SPACE = "[ \t\u00a0\u2000-\u200a\u3000]"
    NEWLINE = "(?:\r\n?|[\n\u2028\u2029\u000b\u000c\u0085])"
    SPACENL = f"(?:{SPACE}|{NEWLINE})"
    APOS = "(?:['\u0092\u2019]|&apos;)"
    APOSETC = f"(?:{APOS}|[`\u0091\u2018\u201b])"
    WORD = f"{LETTER}(?:{LETTER}|{D})*(?:[.!?]{LETTER}(?:{LETTER}|{D})*)*"
    REDAUX = f"{APOS}(?:[msdMSD]|(?i:re|ve|ll))"  # 's 'm 'd 're 've 'll
    SWORD = "[A-Za-z\u00ad]*[A-MO-Za-mo-z]\u00ad*"  # a word before n't (cannot end in n)
    SREDAUX = f"(?i:n){APOSETC}(?i:t)"  # n't
    NUM = f"(?:{D}*(?:[.:,\u00ad\u066b\u066c]{D}+)+|{D}+)"  # 3.5, 1,000, 10:30, 42 (longer alternative first)
    NUMBER = f"[-+]?{NUM}"
    # ACRO (U.S., a.m., a single letter) and ACRO2 (two letters or more); the long special cases go first because
    # Python's alternation takes the first alternative that fits where JFlex takes the longest.
    ACRO_SPECIAL = r"(?i:canada|sino|korean|eu|japan|non)-(?i:U\.S)|(?i:U\.S\.-(?:U\.K|U\.S\.S\.R))"
    ACRO = rf"(?:{ACRO_SPECIAL}|[A-Za-z](?:\.[A-Za-z])*)"
    ACRO2 = rf"(?:{ACRO_SPECIAL}|[A-Za-z](?:\.[A-Za-z])+)"
    HYPHEN = "[-_\u058a\u2010\u2011]"
    INSENTP = "[,;:\u3001]"
    ABSTATE = (
        "(?i:Ala|Ariz)|[A]z|[A](?i:rk)|(?i:Calif|Colo|Conn|Ct|Dak)|[D](?i:el)|(?i:Fla|Ga)|[I](?i:ll)|(?i:Ind|Kans?|Ky)"
        "|[L](?i:a)|[M](?i:ass)|(?i:Md|Mich|Minn)|[M](?i:iss)|(?i:Mo|Mont|Neb|Nev|Okla)|[O](?i:re)|[P](?i:a)"
        "|(?i:Penn|Tenn)|[T](?i:ex)|(?i:Va|Vt)|[W](?i:ash)|(?i:Wisc?|Wyo)"
    )
    # ABBREV1: abbreviations usually followed by a lower-case word (months, days, states, companies, ...)
    ABBREV1 = (
        "(?:(?i:Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec|Mon|Tue|Tues|Wed|Thu|Thurs|Fri|Inc|Cos?|Corp"
        r"|Pp?t[ye]s?|Ltd|Plc|Rt|Bancorp|Bhd|Assn|Univ|Intl|Sys|tel|est|ext|sq|Jr|Sr|Bros|(?:Ed|Ph)\.D|Blvd|Rd|Esq"
        rf"|etc|al|seq|Bldg)|{ABSTATE})\."
    )
    # ABBREV4 (ABBREV2 with its period): titles and acronyms, usually followed by an upper-case word
    ABTITLE = (
        "(?i:Mr|Mrs|Ms)|[M](?i:iss)|(?i:Drs?|Profs?|Sens?|Reps?|Attys?|Lt|Col|Gen|Messrs|Govs?|Adm|Rev|Maj|Sgt|Cpl|Pvt"
        "|Capt|Ste?|Ave|Pres|Lieut|Rt|Hon|Brig|Co?mdr|Pfc|Spc|Supts?|Det|Mt|Ft|Adj|Adv|Asst|Assoc|Ens|Insp|Mlle|Mme"
        "|Msgr|Sfc|Sr)"
    )
    ABBREV4 = (
        rf"(?:{ABTITLE}|(?i:vs)|[v]|(?i:Alex|Wm|Jos|Cie|a\.k\.a|cf|TREAS|Ph)|{ACRO}"
        "|(?i:Invt|Elec|Natl|Dept|Blvd|Rd|Ave)|(?i:m)[ft](?i:g))"
    )
    ABBREV3 = r"(?i:ca|figs?|prop|nos?|art|bldg|pp|op)\."  # only before a number: "fig. 3"
    # ACRONYM/ followers: after these words an acronym's period also ends the sentence ("plan B. The ...").
    ACRONYM_FOLLOWERS = (
        "[A](?i:bout|ccording|dditionally|fter|n|s|t)?|[B](?i:ut)|[D](?i:id|uring)|[E](?i:arlier)"
        r"|[H](?i:e|er|ere|ow|owever)|[I](?i:f|n|t)|[L](?i:ast)|[M](?i:any|ore)|[M](?i:r|s)\.|[N](?i:ow)"
        "|[O](?i:nce|ne|ther|ur)|[S](?i:he|ince|o|ome|uch)|[T](?i:hat|he|heir|hen|here|hese|hey|his)"
        "|[W](?i:e|hen|hile|hat|ho|hy)|[Y](?i:et|ou)"
    )
    SGML = (
        r"<(?:[!?][A-Za-z-][^>\r\n]*|/?[A-Za-z][A-Za-z0-9:.-]*(?:[ ]+(?:[A-Za-z][A-Za-z0-9_:.-]*"
        r"|[A-Za-z][A-Za-z0-9_:.-]*[ ]*=[ ]*['\"][^\r\n'\"]*['\"]|['\"][^\r\n'\"]*['\"]|[ ]*/))*[ ]*/?)>"
    )
    # APOWORD: words with an inner apostrophe that stay whole (o'clock, ma'am, 'n', '90s, d', l', ...). Each
    # alternative is its own rule so that the longest one wins, as in JFlex.
    APOWORD = (
        f"{APOS}(?i:n){APOS}?",
        f"[lLdDjJ]{APOS}",
        f"(?i:dunkin|somethin|ol){APOS}",
        f"{APOS}(?i:em)",
        f"(?i:diff){APOSETC}(?i:rent)",
        f"[A-HJ-XZn]{APOSETC}{L}{L}+",
        f"{APOS}[2-9]0(?i:s)",
        f"{APOS}(?i:till?)",
        f"{L}+[aeiouyAEIOUY]{APOSETC}[aeiouA-Z]{L}*",
        f"{APOS}(?i:cause)",
        r"(?i:cont'd\.?|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l)",
        f"(?i:o){APOSETC}(?i:o)",
    )
    MISCSYMBOL = (
        "[+%&~^|\\\\\u00a6\u00a7\u00a8\u00a9\u00ac\u00ae\u00af\u00b0-\u00ba\u00d7\u00f7\u0387\u05be\u05c0\u05c3"
        "\u05c6\u05f3\u05f4\u0600-\u0603\u0606-\u060a\u060c\u0614\u061b\u061e\u066a\u066d\u0703-\u070d\u07f6-\u07f8"
        "\u0964\u0965\u0e4f\u1fbd\u2016\u2017\u2020-\u2023\u2030-\u2038\u203b\u203e-\u2042\u2044\u207a-\u207f"
        "\u208a-\u208e\u2100-\u214f\u2190-\u21ff\u2200-\u2bff\u3012\u30fb\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40"
        "\uff5b-\uff65]"
    )
    PHONE = (
        r"(?:\([0-9]{2,3}\)[ \u00a0]?|(?:\+\+?)?(?:[0-9]{2,4}[- \u00a0])?[0-9]{2,4}[- \u00a0])[0-9]{3,4}[- \u00a0]?"
        r"[0-9]{3,5}|(?:(?:\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5}"
    )
    THING = f"(?:[dDoOlL]{APOSETC}{LD})?{LD}+(?:{HYPHEN}(?:[dDoOlL]{APOSETC}{LD})?{LD}+)*"  # 3-year-old, o'clock
    HTHING = rf"[A-Za-z0-9][A-Za-z0-9.,\u00ad]*(?:-(?:{ACRO2}\.|[A-Za-z0-9\u00ad]+))+"  # hyphenated words
    THINGA = r"[A-Z]+(?:(?:[+&]|(?i:&amp;))[A-Z]+)+"  # AT&T, R&B (upper case only)
    QUOTES = (
        "(?:''|[`\u2018\u2019\u201a\u201b\u201c\u201d\u0091\u0092\u0093\u0094\u201e\u201f\u2039\u203a\u00ab\u00bb]"
        f"{{1,2}}|{APOS})"
    )
    FILENAME = (
        rf"{LD}+(?:\.{LD}+)*\.(?i:bat|bmp|c|class|cgi|cpp|dll|docx?|exe|gif|gz|h|html?|jar|java|jpe?g|mov|mp3|pdf"
        "|php|pl|png|ppt|ps|py|sql|tar|txt|wav|x|xml|zip)"
    )
    FULLURL = r"(?i:https?)://[^ \t\n\f\r\"<>|(){}]+[^ \t\n\f\r\"<>|.!?(){},-]"
    # (",-_" inside the class is a range, in JFlex as in Python)
    LIKELYURL = (
        r"(?:(?:(?i:www)\.(?:[^ \t\n\f\r\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4})|(?:(?:[^ \t\n\f\r\"`'<>|.!?(){},-_$]+\.)+"
        r"(?i:com|net|org|edu)))(?:/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-])?"
    )
    EMAIL = (
        r"(?:(?i:&lt;)|<)?[a-zA-Z0-9][^ \t\n\f\r\"<>|(){}\u00a0]*@(?:[^ \t\n\f\r\"<>|(){}.\u00a0]+\.)*"
        r"[^ \t\n\f\r\"<>|(){}.\u00a0]+(?:(?i:&gt;)|>)?"
    )
    SMILEY = r"[<>]?[:;=][\-o\*']?[\(\)DPdpO\\{@\|\[\]]"
    ASIANSMILEY = (
        r"[\^x=~<>]\.\[\^x=~<>]|[\-\^x=~<>']_[\-\^x=~<>']|\([\-\^x=~<>'][_.]?[\-\^x=~<>']\)"
        r"|\([\^x=~<>']-[\^x=~<>'`]\)"
    )

    # (pattern, trailing context or None, action); the order is PTBLexer.flex's.
    rules: list[tuple[str, str | None, str]] = [
        (r"(?i:c)[+][+]|(?i:[cf])#", None, "keep"),  # c++, c#, f#
        ("(?i:cannot)|'(?i:twas)", None, "push3"),  # can not, 't was
        (f"{APOS}(?i:tis)|(?i:gonna|gotta|lemme|gimme|wanna)", None, "push2"),  # 't is, gon na, wan na
        (SGML, None, "space"),
        ("&(?i:MD|mdash|ndash);|[\u0096\u0097\u2013\u2014\u2015]", None, "dash"),
        ("(?i:&amp;)", None, "amp"),
        ("&(?:HT|TL|UR|LR|QC|QL|QR|odq|cdq|#[0-9]+);", None, "keep"),
        (WORD, REDAUX, "soft"),  # dog|'s
        (SWORD, SREDAUX, "soft"),  # does|n't
        (WORD, None, "soft"),
        *((alternative, None, "keep") for alternative in APOWORD),
        (f"(?i:y){APOS}", L, "keep"),  # y'|all
        (FULLURL, None, "keep"),
        (LIKELYURL, None, "keep"),
        (EMAIL, None, "keep"),
        (f"@[a-zA-Z_][a-zA-Z_0-9]*|#{LETTER}+", None, "keep"),  # @user, #tag
        (REDAUX, "[^A-Za-z]", "quote"),
        (SREDAUX, None, "quote"),
        (f"{D}{{1,2}}[-/]{D}{{1,2}}[-/]{D}{{2,4}}", None, "keep"),  # DATE
        (NUMBER, None, "soft"),
        ("[\u207a\u207b\u208a\u208b]?(?:[\u2070\u00b9\u00b2\u00b3\u2074-\u2079]+|[\u2080-\u2089]+)", None, "keep"),
        (f"(?:{D}{{1,4}}[- \u00a0])?{D}{{1,4}}(?:\\\\?/|\u2044){D}{{1,4}}", None, "space"),  # FRAC: "3 1/2" is one
        ("[\u00bc\u00bd\u00be\u2153-\u215e]", None, "fraction"),
        (
            r"-(?i:RRB|LRB|RCB|LCB|RSB|LSB)-|(?i:C\.D\.s|pro-|anti-|S(?:&|&amp;)P-500|S(?:&|&amp;)Ls)"
            f"|(?i:cap){APOS}(?i:n)|(?i:c){APOS}(?i:est)",
            None,
            "amp",
        ),  # TBSPEC
        (r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}", None, "keep"),  # and/or
        (r"[A-Z]*\$|#", None, "keep"),  # DOLSIGN
        ("[\u00a2\u00a3\u00a4\u00a5\u0080\u20a0\u20ac\u060b\u0e3f\u20a4\uffe0\uffe1\uffe5\uffe6]", None, "currency"),
        (rf"{ACRO}\.", f"{SPACENL}+(?:{ACRONYM_FOLLOWERS}|{SGML}){SPACENL}", "acronym"),
        (ABBREV3, f"{SPACENL}?{D}", "keep"),
        (ABBREV1, "(?s:..)", "keep"),  # ABBREV1/[^][^]: its two characters count for the longest match
        (ABBREV1, None, "keep"),
        (rf"{ABBREV4}\.", None, "keep"),
        (ABBREV4, SPACE, "keep"),
        (ACRO, SPACENL, "keep"),
        (f"{APOS}[0-9][0-9]", SPACENL, "keep"),  # '90
        (FILENAME, f"{SPACENL}|[.?!,]", "keep"),
        (rf"{WORD}\.", INSENTP, "soft"),
        (PHONE, None, "phone"),
        ('"|(?i:&quot;)', "[A-Za-z0-9$]", "left_quote"),
        ('"|(?i:&quot;)', None, "quote"),
        ("<|(?i:&lt;)", None, "less"),
        (">|(?i:&gt;)", None, "greater"),
        (SMILEY, "[^A-Za-z0-9]", "parens"),  # ":)" becomes ":-RRB-"
        (ASIANSMILEY, None, "parens"),
        (r"\{", None, "-LCB-"),
        (r"\}", None, "-RCB-"),
        (r"\[", None, "-LSB-"),
        (r"\]", None, "-RSB-"),
        (r"\(", None, "-LRB-"),
        (r"\)", None, "-RRB-"),
        ("-+", None, "hyphens"),
        (r"\.{3,5}|(?:\.[ \u00a0]){2,4}\.|[\u0085\u2026]", None, "ellipsis"),
        ("@+|#+|_+", None, "keep"),
        (r"\*+|(?:\\\*){1,3}", None, "keep"),
        (INSENTP, None, "keep"),
        ("[?!]+", None, "keep"),
        ("[.\u00a1\u00bf\u037e\u0589\u061f\u06d4\u0700-\u0702\u07fa\u3002]", None, "keep"),
        ("=", None, "keep"),
        ("/", None, "keep"),
        (rf"{HTHING}\.", INSENTP, "soft"),
        (HTHING, None, "soft"),
        (rf"{THING}\.", INSENTP, "keep"),
        (THING, None, "keep"),
        (rf"{THINGA}\.", INSENTP, "amp"),
        (THINGA, None, "amp"),
        ("'", "[A-Za-z][^ \t\n\r\u00a0]", "left_quote"),
        (REDAUX, None, "quote"),
        (SREDAUX, None, "quote"),
        (QUOTES, None, "quote"),
        ("<<|>>", None, "keep"),
        (MISCSYMBOL, None, "keep"),
        (f"\u0000|{SPACE}+|[\u200b\u200e\u200f\ufeff]", None, "skip"),
        (NEWLINE, None, "skip"),
        ("(?i:&nbsp;)", None, "skip"),
        ("(?s:.)", None, "skip"),  # untokenizable: the jar deletes it (with a warning)
    ]
    return [(re.compile(f"({p})(?:{t})" if t else p), t is not None, action) for p, t, action in rules]


_LEFT_SINGLE = re.compile("[\u0091\u2018\u201b\u2039]")
_RIGHT_SINGLE = re.compile("[\u0092\u2019\u203a]")
_LEFT_DOUBLE = re.compile("[\u0093\u201c\u00ab]")
_RIGHT_DOUBLE = re.compile("[\u0094\u201d\u00bb]")
_AMP = re.compile("(?i:&amp;)")
_FRACTIONS = {"\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4", "\u2153": "1/3", "\u2154": "2/3"}
_CURRENCY = {"\u00a2": "cents", "\u00a3": "#", "\u0080": "$", "\u00a4": "$", "\u20a0": "$", "\u20ac": "$"}
_ASSIMILATIONS = frozenset(["cannot", "gonna", "gotta", "lemme", "gimme", "wanna"])
# A run of ASCII letters ended by a space or tab can only be a plain WORD (no rule matches longer there), and a
# run of spaces or tabs not followed by another kind of space is skipped: the bulk of caption text takes this path.
_FAST = re.compile("[A-Za-z]+(?=[ \t\n])|[ \t]+(?![\u00a0\u2000-\u200a\u3000])")


def _latex_quotes(token: str, probably_left: bool) -> str:
    """PTBLexer.latexQuotes: straight quotes become ` `` (left) or ' '' (right); curly ones by their direction."""
    if probably_left:
        token = token.replace("&apos;", "`").replace("'", "`").replace("&quot;", "``").replace('"', "``")
    else:
        token = token.replace("&apos;", "'").replace("&quot;", "''").replace('"', "''")
    token = _LEFT_SINGLE.sub("`", token)
    token = _RIGHT_SINGLE.sub("'", token)
    token = _LEFT_DOUBLE.sub("``", token)
    return _RIGHT_DOUBLE.sub("''", token)


def _normalize(token: str, action: str) -> str | None:
    """What PTBLexer returns for the matched text (None: nothing, e.g. whitespace)."""
    if action == "keep":
        return token
    if action == "skip":
        return None
    if action == "soft":  # removeSoftHyphens
        return token.replace("\u00ad", "") or "-"
    if action == "space":  # normalizeSpace: a space inside a token becomes U+00A0
        return token.replace(" ", "\u00a0")
    if action == "phone":
        return token.replace(" ", "\u00a0").replace("(", "-LRB-").replace(")", "-RRB-")
    if action == "parens":
        return token.replace("(", "-LRB-").replace(")", "-RRB-")
    if action == "dash":
        return "--"
    if action == "amp":
        return _AMP.sub("&", token)
    if action in ("quote", "left_quote"):
        return _latex_quotes(token, action == "left_quote")
    if action == "fraction":
        return _FRACTIONS.get(token, token)
    if action == "currency":
        return _CURRENCY.get(token, token)
    if action == "hyphens":  # ptb3Dashes: 3 or 4 hyphens are a dash
        return "--" if 3 <= len(token) <= 4 else token
    if action == "ellipsis":
        return "..."
    if action == "less":
        return "<"
    if action == "greater":
        return ">"
    return action  # a bracket: the action is its PTB name (-LRB- ...)


def _ptb_lex(text: str) -> list[str]:
    """PTBLexer's tokens for ``text`` (before lower-casing and punctuation removal)."""
    rules = _ptb_rules()
    tokens: list[str] = []
    position, end = 0, len(text)
    while position < end:
        fast = _FAST.match(text, position)
        if fast is not None:
            run = fast.group()
            if not run[0].isalpha():
                position = fast.end()
                continue
            if run.lower() not in _ASSIMILATIONS:
                tokens.append(run)
                position = fast.end()
                continue
        best_length, token, action = 0, "", "skip"
        for pattern, has_context, rule_action in rules:
            match = pattern.match(text, position)
            # Longest match wins, the earlier rule on a tie (hence the strict ">").
            if match is not None and match.end() - position > best_length:
                best_length = match.end() - position
                token = match.group(1) if has_context else match.group()
                action = rule_action
        consumed = len(token)
        if action in ("push3", "push2"):  # yypushback: "cannot" is returned as "can", then "not" is lexed again
            cut = 3 if action == "push3" else 2
            token, consumed, action = token[:-cut], consumed - cut, "keep"
        elif action == "acronym":  # the period is pushed back (it ends the sentence); "C." alone becomes "C"
            consumed -= 1
            if len(token) == 2:
                token = token[:-1]
            action = "keep"
        normalized = _normalize(token, action)
        if normalized is not None:
            tokens.append(normalized)
        position += consumed
    return tokens


def _java_lower(token: str) -> str:
    """``String.toLowerCase()``: as ``str.lower()`` except how a capital sigma's final form is decided."""
    if "\u03a3" not in token:
        return token.lower()
    chars = [char.lower() for char in token]  # only the sigma's lower case depends on its neighbours
    for i, char in enumerate(token):
        if char == "\u03a3":
            before, after = token[:i], token[i + 1 :]
            # Java: final if a cased letter precedes it within the word and none follows it within the word.
            word_before = re.search(r"\w*$", before).group()
            word_after = re.match(r"\w*", after).group()
            final = any(c.lower() != c.upper() for c in word_before) and not any(
                c.lower() != c.upper() for c in word_after
            )
            chars[i] = "\u03c2" if final else "\u03c3"
    return "".join(chars)


@functools.lru_cache(maxsize=1 << 16)
def _ptb_tokenize_cached(text: str) -> str:
    # As ptbtokenizer.py: the caption's "\n" become spaces; the jar's line is its lower-cased tokens joined by
    # spaces; pycocoevalcap keeps `' '.join(w for w in line.rstrip().split(' ') if w not in PUNCTUATIONS)`.
    tokens = _ptb_lex(text.replace("\n", " ") + "\n")
    line = " ".join(_java_lower(token) for token in tokens).rstrip()
    return " ".join(word for word in line.split(" ") if word not in PUNCTUATIONS)


def ptb_tokenize(text: str) -> str:
    """
    Tokenize a caption exactly as pycocoevalcap's `PTBTokenizer` does, in pure Python.

    pycocoevalcap runs Stanford CoreNLP 3.4.1's PTBTokenizer (`-preserveLines -lowerCase`) and removes the tokens in
    its `PUNCTUATIONS` list. This reproduces that on captions: lower-casing, contractions split ("don't" -> "do
    n't", "children's" -> "children 's"), hyphenated words and numbers kept whole ("3-year-old", "3.5", "1,000"),
    "cannot"/"gonna" split, quotes, commas, periods, dashes and ellipses dropped, parentheses kept as "-lrb-" and
    "-rrb-" (the jar's lower-cased names, which the punctuation list misses), "&" and "/" kept.

    Args:
        text (`str`):
            One caption.

    Returns:
        `str`: the space-separated tokens, possibly empty.

    Example:

    ```python
    >>> ptb_tokenize("A dog's toy (red) doesn't fit, 3.5 feet...")
    "a dog 's toy -lrb- red -rrb- does n't fit 3.5 feet"
    ```
    """
    if not isinstance(text, str):
        raise TypeError(f"ptb_tokenize expects a caption string, got {type(text).__name__}")
    return _ptb_tokenize_cached(text)


# ----------------------------------------------------------------------------------------------------------------
# BLEU, ROUGE-L, CIDEr-D on tokenized captions: pycocoevalcap's arithmetic, operation for operation.
# ----------------------------------------------------------------------------------------------------------------


def _ngram_counts(words: list[str], n: int) -> dict[tuple[str, ...], int]:
    """bleu_scorer.precook / cider_scorer.precook: counts of all 1..n-grams."""
    counts: dict[tuple[str, ...], int] = defaultdict(int)
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i : i + k])] += 1
    return counts


def _bleu(hypotheses: list[str], references: list[list[str]], n: int = 4) -> list[float]:
    """Corpus BLEU-1..n as pycocoevalcap/bleu/bleu_scorer.py computes it with option "closest".

    Clipped n-gram matches and n-gram counts are summed over the corpus; each hypothesis's effective reference length
    is the closest reference length (the shorter one on a tie); the brevity penalty uses the summed lengths. The
    tiny/small constants are bleu_scorer's (they keep a zero count from dividing by zero).
    """
    tiny, small = 1e-15, 1e-9
    correct, guess = [0] * n, [0] * n
    test_length = reference_length = 0
    for hypothesis, refs in zip(hypotheses, references, strict=True):
        max_counts: dict[tuple[str, ...], int] = {}
        lengths = []
        for ref in refs:
            words = ref.split()
            lengths.append(len(words))
            for ngram, count in _ngram_counts(words, n).items():
                max_counts[ngram] = max(max_counts.get(ngram, 0), count)
        words = hypothesis.split()
        length = len(words)
        test_length += length
        reference_length += min((abs(ref_length - length), ref_length) for ref_length in lengths)[1]
        for k in range(n):
            guess[k] += max(0, length - k)
        for ngram, count in _ngram_counts(words, n).items():
            correct[len(ngram) - 1] += min(max_counts.get(ngram, 0), count)
    scores, product = [], 1.0
    for k in range(n):
        product *= float(correct[k] + tiny) / (guess[k] + small)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (test_length + tiny) / (reference_length + small)
    if ratio < 1:
        scores = [score * math.exp(1 - 1 / ratio) for score in scores]
    return scores


def _lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (rouge.py's my_lcs, in O(len(b)) memory)."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if token == other else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def _rouge_l(hypotheses: list[str], references: list[list[str]], beta: float = 1.2) -> float:
    """pycocoevalcap/rouge/rouge.py: per image, F-measure (beta=1.2) of the best precision and the best recall of the
    LCS over the references (maxima taken separately, as rouge.py does), averaged over images. Tokens come from
    ``split(" ")`` as in rouge.py, so an empty caption is one empty token."""
    total = 0.0
    for hypothesis, refs in zip(hypotheses, references, strict=True):
        candidate = hypothesis.split(" ")
        precisions, recalls = [], []
        for ref in refs:
            tokens = ref.split(" ")
            lcs = _lcs_length(tokens, candidate)
            precisions.append(lcs / float(len(candidate)))
            recalls.append(lcs / float(len(tokens)))
        precision, recall = max(precisions), max(recalls)
        if precision != 0 and recall != 0:
            total += ((1 + beta**2) * precision * recall) / float(recall + beta**2 * precision)
    return total / len(hypotheses)


def _cider_d(hypotheses: list[str], references: list[list[str]], n: int = 4, sigma: float = 6.0) -> float:
    """pycocoevalcap/cider/cider_scorer.py (CIDEr-D): tf-idf n-gram vectors (n = 1..4) whose document frequencies
    come from the references of the images being scored, clipped cosine similarity (min(hyp, ref) * ref), a Gaussian
    penalty on the length difference (sigma=6; cider_scorer's "length" counts bigrams), the mean over n and over the
    references, times 10, averaged over images."""
    document_frequency: dict[tuple[str, ...], float] = defaultdict(float)
    cooked_refs = [[_ngram_counts(ref.split(), n) for ref in refs] for refs in references]
    for refs in cooked_refs:
        for ngram in {ngram for ref in refs for ngram in ref}:
            document_frequency[ngram] += 1
    log_num_images = math.log(float(len(references)))

    def vectorize(counts):
        vectors = [{} for _ in range(n)]
        norms = [0.0] * n
        length = 0
        for ngram, term_frequency in counts.items():
            order = len(ngram) - 1
            weight = float(term_frequency) * (log_num_images - math.log(max(1.0, document_frequency.get(ngram, 0.0))))
            vectors[order][ngram] = weight
            norms[order] += weight**2
            if order == 1:  # cider_scorer counts the bigrams as the length (`if n == 1`)
                length += term_frequency
        return vectors, [math.sqrt(norm) for norm in norms], length

    penalty_denominator = 2 * sigma**2
    total = 0.0
    for hypothesis, refs in zip(hypotheses, cooked_refs, strict=True):
        vector, norm, length = vectorize(_ngram_counts(hypothesis.split(), n))
        score = [0.0] * n
        for ref in refs:
            ref_vector, ref_norm, ref_length = vectorize(ref)
            delta = float(length - ref_length)
            penalty = math.e ** (-(delta**2) / penalty_denominator)
            for k in range(n):
                value = 0.0
                for ngram, weight in vector[k].items():
                    ref_weight = ref_vector[k].get(ngram, 0.0)
                    value += min(weight, ref_weight) * ref_weight
                if norm[k] != 0 and ref_norm[k] != 0:
                    value /= norm[k] * ref_norm[k]
                score[k] += value * penalty
        total += sum(score) / n / len(refs) * 10.0
    return total / len(hypotheses)


# ----------------------------------------------------------------------------------------------------------------
# METEOR and SPICE: the jars pycocoevalcap ships, run only when Java and the jars are there.
# ----------------------------------------------------------------------------------------------------------------


def _pycocoevalcap_dir() -> Path | None:
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _meteor_jar() -> tuple[str, Path] | str:
    """(java, jar) or the reason METEOR cannot run."""
    java = shutil.which("java")
    if java is None:
        return "no `java` executable on PATH (METEOR runs pycocoevalcap's meteor-1.5.jar, which needs Java)"
    package = _pycocoevalcap_dir()
    if package is None:
        return "pycocoevalcap is not installed (`pip install pycocoevalcap` ships meteor-1.5.jar)"
    jar = package / "meteor" / "meteor-1.5.jar"
    if not jar.is_file() or not (jar.parent / "data" / "paraphrase-en.gz").is_file():
        return f"{jar} or its data/paraphrase-en.gz is missing"
    return java, jar


class _Meteor:
    """A meteor-1.5.jar process driven as pycocoevalcap/meteor/meteor.py drives it (same command, same protocol).

    Per image a ``SCORE ||| ref ||| ... ||| hyp`` line returns sufficient statistics; one ``EVAL ||| stats ||| ...``
    line returns each image's score and then the corpus METEOR, which is what pycocoevalcap reports. One process
    can evaluate several sets (human_agreement's rounds) and pays the jar's start-up (~5 s) once.
    """

    def __init__(self, java: str, jar: Path):
        command = [java, "-jar", "-Xmx2G", jar.name, "-", "-", "-stdio", "-l", "en", "-norm"]
        self._process = subprocess.Popen(
            command, cwd=jar.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self._stderr: list[bytes] = []
        self._stderr_reader = threading.Thread(target=lambda: self._stderr.extend(self._process.stderr), daemon=True)
        self._stderr_reader.start()

    def _readline(self) -> str:
        line = self._process.stdout.readline()
        if not line:
            self._process.wait(timeout=30)
            self._stderr_reader.join(timeout=5)
            tail = b"".join(self._stderr).decode(errors="replace").strip()[-2000:]
            raise RuntimeError(f"meteor-1.5.jar exited with status {self._process.returncode}: {tail}")
        return line.decode().strip()

    def _write(self, lines: list[str]) -> None:
        try:
            for line in lines:
                self._process.stdin.write(f"{line}\n".encode())
            self._process.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the reader sees the process end and reports its stderr

    def score(self, hypotheses: list[str], references: list[list[str]]) -> float:
        # meteor.py's _stat: the hypothesis loses "|||" and double spaces; the references are sent as they are.
        lines = [
            " ||| ".join(("SCORE", " ||| ".join(refs), hypothesis.replace("|||", "").replace("  ", " ")))
            for hypothesis, refs in zip(hypotheses, references, strict=True)
        ]
        # A writer thread feeds the SCORE lines while we read the answers, so neither pipe can fill up and block.
        writer = threading.Thread(target=self._write, args=(lines,), daemon=True)
        writer.start()
        stats = [self._readline() for _ in lines]
        writer.join()
        self._write(["EVAL ||| " + " ||| ".join(stats)])
        for _ in lines:
            self._readline()  # per-image scores
        return float(self._readline())

    def close(self) -> None:
        try:
            self._process.stdin.close()
            self._process.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> "_Meteor":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _spice_ready() -> str | None:
    """None when SPICE can run, else the reason it cannot."""
    if shutil.which("java") is None:
        return "no `java` executable on PATH (SPICE runs pycocoevalcap's spice-1.0.jar, which needs Java)"
    package = _pycocoevalcap_dir()
    if package is None:
        return "pycocoevalcap is not installed (`pip install pycocoevalcap` ships spice-1.0.jar)"
    lib = package / "spice" / "lib"
    jars = [package / "spice" / "spice-1.0.jar"]
    jars += [lib / name for name in ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")]
    missing = [str(jar) for jar in jars if not jar.is_file()]
    if missing:
        # pycocoevalcap's Spice() would download CoreNLP 3.6.0 at this point; we never reach for the network.
        return f"missing {', '.join(missing)} (pycocoevalcap downloads Stanford CoreNLP 3.6.0 on first use)"
    return None


def _spice(hypotheses: list[str], references: list[list[str]]) -> float:
    from pycocoevalcap.spice.spice import Spice  # the field's scorer, used as is once its jars are present

    ids = list(range(len(hypotheses)))
    score, _ = Spice().compute_score(
        {i: refs for i, refs in zip(ids, references, strict=True)},
        {i: [hyp] for i, hyp in zip(ids, hypotheses, strict=True)},
    )
    return float(score)


# ----------------------------------------------------------------------------------------------------------------
# The public functions
# ----------------------------------------------------------------------------------------------------------------


def _describe_ids(ids: list, limit: int = 10) -> str:
    shown = ", ".join(repr(i) for i in ids[:limit])
    return f"[{shown}{', ...' if len(ids) > limit else ''}]"


def _check_references(image_id, refs) -> list[str]:
    if isinstance(refs, str) or not isinstance(refs, Sequence):
        raise ValueError(
            f"references for image {image_id!r} must be a list of caption strings, got {type(refs).__name__}"
            + (" (wrap a single reference in a list)" if isinstance(refs, str) else "")
        )
    if len(refs) == 0:
        raise ValueError(f"image {image_id!r} has no references: every scored image needs at least one")
    for ref in refs:
        if not isinstance(ref, str):
            raise ValueError(f"references for image {image_id!r} must be strings, got {type(ref).__name__}")
    return list(refs)


def _check_prediction(image_id, prediction) -> str:
    if not isinstance(prediction, str):
        raise ValueError(
            f"the prediction for image {image_id!r} must be one caption string (pycocoevalcap scores exactly one "
            f"hypothesis per image), got {type(prediction).__name__}"
        )
    return prediction


def _align(predictions, references) -> tuple[list, list[str], list[list[str]]]:
    """Validate the inputs and return (image ids, predictions, references) in one order."""
    if isinstance(predictions, Mapping) != isinstance(references, Mapping):
        raise ValueError(
            f"predictions is a {type(predictions).__name__} but references is a {type(references).__name__}: give "
            "both as dicts keyed by image id, or both as lists in the same image order"
        )
    if isinstance(predictions, Mapping):
        ids = list(predictions)
        missing = [i for i in ids if i not in references]
        extra = [i for i in references if i not in predictions]
        if missing or extra:
            problems = []
            if missing:
                problems.append(
                    f"{len(missing)} image id(s) have a prediction but no references: {_describe_ids(missing)}"
                )
            if extra:
                problems.append(f"{len(extra)} image id(s) have references but no prediction: {_describe_ids(extra)}")
            raise ValueError("predictions and references must cover the same images; " + "; ".join(problems))
        refs = [references[i] for i in ids]
        preds = [predictions[i] for i in ids]
    else:
        for name, value in (("predictions", predictions), ("references", references)):
            if isinstance(value, str) or not isinstance(value, Sequence):
                raise ValueError(f"{name} must be a list or a dict keyed by image id, got {type(value).__name__}")
        if len(predictions) != len(references):
            raise ValueError(
                f"got {len(predictions)} predictions but {len(references)} reference lists: one list of references "
                "per predicted caption, in the same order"
            )
        ids = list(range(len(predictions)))
        preds, refs = list(predictions), list(references)
    if not ids:
        raise ValueError("no images to score: predictions and references are empty")
    preds = [_check_prediction(i, p) for i, p in zip(ids, preds, strict=True)]
    refs = [_check_references(i, r) for i, r in zip(ids, refs, strict=True)]
    return ids, preds, refs


def _usage_warnings(num_images: int, mean_references: float, expected_num_images: int | None) -> list[str]:
    messages = []
    if num_images == 1:
        messages.append(
            "scoring a single image: CIDEr-D's document frequencies come from the references of the scored images, "
            "so with one image every n-gram's idf is log(1) - log(1) = 0 and CIDEr-D is 0 by construction; score "
            "the whole split"
        )
    if expected_num_images is not None and num_images != expected_num_images:
        if num_images < expected_num_images:
            messages.append(
                f"scored {num_images} images but expected_num_images={expected_num_images}: numbers on a subset are "
                "not comparable with the full split's (CIDEr-D even depends on which images are in the set)"
            )
        else:
            messages.append(
                f"scored {num_images} images, more than expected_num_images={expected_num_images}: check for "
                "duplicated image ids or the wrong split"
            )
    if mean_references < 2:
        messages.append(
            f"{mean_references:.2f} references per image on average (fewer than 2): BLEU, METEOR and CIDEr-D depend "
            "strongly on the number of references, so these are not comparable with results on COCO (5 per image) "
            "or Flickr (5 per image)"
        )
    return messages


def _score_rounds(
    rounds: list[tuple[list[str], list[list[str]]]], meteor: bool, spice: bool
) -> tuple[dict[str, float | None], list[str]]:
    """Average the metrics over rounds of (tokenized hypotheses, tokenized references); returns (scores, problems)."""
    problems: list[str] = []
    totals: dict[str, float | None] = {name: 0.0 for name in METRIC_NAMES}
    if spice:
        totals["SPICE"] = 0.0
    for hypotheses, references in rounds:
        for name, value in zip(("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"), _bleu(hypotheses, references), strict=True):
            totals[name] += value
        totals["ROUGE-L"] += _rouge_l(hypotheses, references)
        totals["CIDEr-D"] += _cider_d(hypotheses, references)

    if not meteor:
        totals["METEOR"] = None
    else:
        found = _meteor_jar()
        if isinstance(found, str):
            totals["METEOR"] = None
            problems.append(f"METEOR not computed: {found}; 'METEOR' is None (absent, not 0)")
        else:
            try:
                with _Meteor(*found) as scorer:
                    totals["METEOR"] = sum(scorer.score(h, r) for h, r in rounds)
            except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as error:
                totals["METEOR"] = None
                problems.append(f"METEOR not computed: {error}; 'METEOR' is None (absent, not 0)")

    if spice:
        reason = _spice_ready()
        if reason is None:
            try:
                totals["SPICE"] = sum(_spice(h, r) for h, r in rounds)
            except Exception as error:  # noqa: BLE001 - any failure of the external jar means "absent", reported
                reason = f"spice-1.0.jar failed: {error}"
        if reason is not None:
            totals["SPICE"] = None
            problems.append(f"SPICE not computed: {reason}; 'SPICE' is None (absent, not 0)")

    scores = {name: (None if total is None else float(total) / len(rounds)) for name, total in totals.items()}
    return scores, problems


def compute_caption_metrics(
    predictions: Sequence[str] | Mapping[object, str],
    references: Sequence[Sequence[str]] | Mapping[object, Sequence[str]],
    *,
    meteor: bool = True,
    spice: bool = False,
    expected_num_images: int | None = None,
    teacher_forced: bool = False,
) -> dict[str, float | int | None]:
    """
    Score captions with the COCO caption metrics, numerically as pycocoevalcap reports them.

    Every caption is PTB-tokenized (:func:`ptb_tokenize`), then scored with corpus BLEU-1..4 (closest reference
    length), METEOR 1.5, ROUGE-L (beta 1.2) and CIDEr-D (document frequencies from the references of the scored
    images), optionally SPICE. BLEU, ROUGE-L and CIDEr-D are computed in Python and equal pycocoevalcap's to 1e-6.
    METEOR and SPICE run the jars pycocoevalcap ships; when Java or a jar is missing the value is `None` and a
    [`CaptionMetricWarning`] says why (never 0).

    Misuse that makes the numbers incomparable with published ones warns (`CaptionMetricWarning`): a single image,
    fewer (or more) images than `expected_num_images`, `teacher_forced=True`, fewer than 2 references per image on
    average.

    Args:
        predictions (`list[str]` or `dict[image_id, str]`):
            One generated caption per image.
        references (`list[list[str]]` or `dict[image_id, list[str]]`):
            The reference captions of each image: lists in the order of `predictions`, or a dict with the same ids.
        meteor (`bool`, *optional*, defaults to `True`):
            Compute METEOR (needs Java and pycocoevalcap's meteor-1.5.jar; about 5 s of jar start-up).
        spice (`bool`, *optional*, defaults to `False`):
            Compute SPICE (needs Java and pycocoevalcap's SPICE jars including Stanford CoreNLP 3.6.0).
        expected_num_images (`int`, *optional*):
            The number of images in the split being evaluated; a different count warns (a subset is not comparable).
        teacher_forced (`bool`, *optional*, defaults to `False`):
            Set when the captions were decoded from teacher-forced logits rather than `generate()`; warns, because
            such captions see the reference and overstate every metric.

    Returns:
        `dict`: `"BLEU-1"` .. `"BLEU-4"`, `"METEOR"` (`float` or `None`), `"ROUGE-L"`, `"CIDEr-D"`, `"SPICE"` (only
        when requested; `float` or `None`) and `"num_images"`. Scales are pycocoevalcap's: BLEU, METEOR, ROUGE-L and
        SPICE in [0, 1], CIDEr-D in [0, 10].

    Raises:
        `ValueError`: mismatched image ids or lengths, an image without references, a prediction that is not one
            string, or no images at all.

    Example:

    ```python
    >>> scores = compute_caption_metrics(
    ...     ["a dog runs on the grass", "two people sit on a bench"],
    ...     [["a dog running on grass", "a brown dog runs"], ["two people sitting on a bench", "people on a bench"]],
    ...     meteor=False,
    ... )
    >>> round(scores["BLEU-1"], 3), scores["num_images"]
    (0.833, 2)
    ```
    """
    ids, preds, refs = _align(predictions, references)
    messages = _usage_warnings(len(ids), sum(len(r) for r in refs) / len(ids), expected_num_images)
    if teacher_forced:
        messages.append(
            "teacher_forced=True: captions decoded from teacher-forced logits (each step sees the reference's "
            "previous words) are not generated captions; these scores overstate the model and are not comparable "
            "with published ones, which caption with generate()"
        )
    hypotheses = [ptb_tokenize(p) for p in preds]
    tokenized_refs = [[ptb_tokenize(r) for r in image_refs] for image_refs in refs]
    scores, problems = _score_rounds([(hypotheses, tokenized_refs)], meteor, spice)
    for message in messages + problems:
        warnings.warn(message, CaptionMetricWarning, stacklevel=2)
    return {**scores, "num_images": len(ids)}


def human_agreement(
    references: Sequence[Sequence[str]] | Mapping[object, Sequence[str]],
    *,
    meteor: bool = True,
    spice: bool = False,
    expected_num_images: int | None = None,
) -> dict[str, float | int | None]:
    """
    Score the references against each other: the "human" row reported beside a model on COCO.

    Leave-one-out over the reference index: for each `k` below the smallest number of references any image has, the
    `k`-th reference of every image is the prediction and the image's other references are the references; the
    metrics of these rounds are averaged. (An image with more references than the smallest count keeps its extra
    references as references in every round.) Each round is scored with `n - 1` references where a model gets `n`,
    so human agreement is slightly understated; that is how it is reported.

    Args:
        references (`list[list[str]]` or `dict[image_id, list[str]]`):
            At least 2 reference captions per image.
        meteor (`bool`, *optional*, defaults to `True`):
            Compute METEOR (one jar process for all rounds).
        spice (`bool`, *optional*, defaults to `False`):
            Compute SPICE.
        expected_num_images (`int`, *optional*):
            As in [`compute_caption_metrics`].

    Returns:
        `dict`: the keys of [`compute_caption_metrics`], each the mean over the rounds (`METEOR`/`SPICE` are `None`
        when they could not be computed).

    Raises:
        `ValueError`: an image with fewer than 2 references, or no images.

    Example:

    ```python
    >>> human = human_agreement(
    ...     [
    ...         ["a dog runs on the grass", "a dog is running on grass", "a brown dog runs"],
    ...         ["two cats sleep on a sofa", "two cats sleeping", "cats asleep on a couch"],
    ...     ],
    ...     meteor=False,
    ... )
    >>> round(human["BLEU-1"], 3)
    0.587
    ```
    """
    if isinstance(references, Mapping):
        ids = list(references)
        refs = [_check_references(i, references[i]) for i in ids]
    elif isinstance(references, str) or not isinstance(references, Sequence):
        raise ValueError(f"references must be a list or a dict keyed by image id, got {type(references).__name__}")
    else:
        ids = list(range(len(references)))
        refs = [_check_references(i, r) for i, r in zip(ids, references, strict=True)]
    if not ids:
        raise ValueError("no images to score: references is empty")
    too_few = [i for i, r in zip(ids, refs, strict=True) if len(r) < 2]
    if too_few:
        raise ValueError(
            f"human agreement needs at least 2 references per image (one to score, one to score against); "
            f"{len(too_few)} image(s) have fewer: {_describe_ids(too_few)}"
        )
    tokenized = [[ptb_tokenize(r) for r in image_refs] for image_refs in refs]
    num_rounds = min(len(r) for r in tokenized)
    rounds = [([r[k] for r in tokenized], [r[:k] + r[k + 1 :] for r in tokenized]) for k in range(num_rounds)]
    mean_references = sum(len(r) - 1 for r in tokenized) / len(ids)
    messages = _usage_warnings(len(ids), mean_references, expected_num_images)
    scores, problems = _score_rounds(rounds, meteor, spice)
    for message in messages + problems:
        warnings.warn(message, CaptionMetricWarning, stacklevel=2)
    return {**scores, "num_images": len(ids)}
