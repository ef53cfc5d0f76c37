"""The PTB tokenization that pycocoevalcap applies to every caption before scoring, re-built in Python from
Stanford CoreNLP 3.4.1's PTBLexer.flex (same tokens, no Java): `ptb_tokenize`."""

import functools
import re

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
