"""A knowledge graph read out of the plays, and an entity linker for their text (issue 16, part 1).

Every play in this edition opens with a list of its persons ("PERSONS
REPRESENTED", "Dramatis Personae") and then prints each speech under a heading
on a line of its own ("Ham.", "LADY MACBETH.", "1 Clown."), with stage
directions in [brackets] and ACT / SCENE headings between scenes.  This module
turns those two layouts into triples (head, relation, tail) with counts.

**Entities** (``KnowledgeGraph.entity_types``):

* ``character`` — a person of the persons list, id ``"<play>::<name>"``
  ("Hamlet::Polonius"), so the Antonio of The Tempest is not the Antonio of
  Twelfth Night.  Two persons of one list with the same name ("Jaques" twice in
  As You Like It) get their first description in brackets:
  "As You Like It::Jaques (Son of Sir Rowland de Bois)".
* ``role`` — an anonymous speaker that only a heading names ("First Clown",
  "Messenger", "Second Lord"): ``"Hamlet::First Clown"``.  Roles come from
  headings whose words are role nouns (``ROLE_NOUNS`` or a noun of the play's
  own group lines), never from proper names.
* ``play`` (``"play:Hamlet"``), ``genre`` (``"genre:tragedy"``) and ``place``
  (``"place:Denmark"``, shared by all plays): the realm, city or people a title
  is "of" ("King of Denmark", "Queen of the Amazons" -> "place:Amazons").

**Groups are not entities.**  A persons-list line whose head noun is a plural
common noun or starts with a count word ("Lords, Ladies, Officers...",
"Players.", "Two Clowns, Grave-diggers.") is a *group*: it gives no entity and
no triple, but its nouns teach the heading resolver that "Lord." or "1 Clown."
is a role.  A heading that names a crowd ("ALL.", "BOTH.", "CITIZENS.") is a
group speech: it resolves to no entity and breaks speech adjacency.

**Relations**:

* from the persons list (``parse_persons_list``): kinship ``son_of``,
  ``daughter_of``, ``father_of``, ``mother_of``, ``brother_of``, ``sister_of``,
  ``wife_of``, ``husband_of``, ``widow_of``, ``nephew_of``, ``niece_of``,
  ``uncle_of``, ``great_uncle_of``, ``aunt_of``, ``cousin_of``, ``kinsman_of``;
  service ``servant_to`` (servant, man, page, steward, nurse, usher, physician,
  chamberlain, secretary, tutor: anyone "in the service of"), ``attendant_on``
  (attendant, attending on, waiting-woman, woman, maid of honour),
  ``friend_to``, ``follower_of`` (follower, retainer), ``officer_of``
  (lieutenant, ancient); love ``loves`` ("in love with"; "beloved of X" is
  stored as loves(X, ...)), ``suitor_to``, ``betrothed_to``, ``mistress_of``;
  titles ``<rank>_of(character, place)`` for the ranks in ``TITLE_RANKS``
  (king_of, queen_of, prince_of, duke_of, earl_of, ...).  Only what the list
  states is stored, never its inverse (no father_of from son_of), so a held-out
  triple is never the mirror of a training one.
* ``appears_in(character|role, play)``: count = number of speeches.
* ``speaks_to(a, b)``: two consecutive speeches of one scene by different single
  speakers; count = number of such adjacencies.  **Symmetric, stored once**
  with head < tail in entity order (a reply and the speech it answers count for
  the same pair); a group, joint ("Mar. and Ber.") or unresolved speech between
  two speeches breaks the adjacency, and nothing is adjacent across a scene
  heading.
* ``genre_of(play, genre)``.

**Resolving references in the persons list.**  "his son" / "her Sister" refer
to the nearest entry above that is not itself described by a pronoun ("MALCOLM,
his Son. / DONALBAIN, his Son." are both Duncan's) and whose gender (guessed
from words like Lady, Queen, daughter, son) does not contradict the pronoun.
"the former" is the entry just above, except in "Son to the former, and Nephew
to the present King" (Hamlet), where it means the former king, who is not an
entry: dropped.  "the King" / "the Duke" is the play's holder of that rank: the
one whose name starts with the rank ("KING HENRY V.") or else the first listed
(lists run in order of rank).  Names resolve by full name, title ("the Duke of
York"), possessive ("Juliet's Nurse" -> the entry named Nurse), a unique name
token, the first listed of several entries sharing a token ("Brutus": Marcus
before Decius), or one letter off ("Aegion" -> Aegeon).  What does not resolve
is dropped and counted with its reason (``PersonsList.drops``); so is a clause
that follows an unresolved target (its apposition: "son to GEFFREY, late Duke
of Bretagne, the elder brother to King John").

**Resolving headings** (``Play.resolve_heading``): exact alias (full name,
name words, titles: "YORK." -> the Duke of York, "ABBESS." -> "an Abbess"),
then abbreviation (every heading word a prefix of the alias's words, in order:
"Ham." -> Hamlet, "LADY P." -> Lady Percy), a rank alone ("KING." -> the
play's king), an honorific dropped ("QUEEN MARGARET." -> Margaret), a spelling
variant the edition mixes ("Glou." -> Gloucester = Gloster, "POMPEY." ->
Pompeius), one letter off ("PERACLES."), and last an anonymous role.  When
several persons fit ("BRUTUS.": Marcus or Decius), ``_paragraph_speeches``
breaks the tie by the play's own evidence (see its docstring): who else
speaks in the scene, who the stage directions bring on, whose relative or
title-mate is there; then the first listed.  Where it fails: a name the list
never gives ("HOT." for Hotspur in Henry IV Part 1), a person read as a role
("DOCTOR." in Macbeth), and speech prefixes the edition itself misprints.

**Entity linking** (``link_mentions``): greedy longest match over the play's
alias table, only on capitalised words; see its docstring for what it skips.

Measured (experiments/knowledge_graph.py, results in
experiments/results/knowledge_graph.md): 98.9% of 30,581 speech headings
resolve to an entity (91.9% to a persons-list character); 125 hand-checked
triples, all correct; linking P 96.8% / R 83.3% on 60 annotated lines.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .pairs import is_scene_heading, is_speaker_heading

__all__ = ["Person", "PersonsList", "Drop", "Speech", "Play", "KnowledgeGraph", "find_persons_list",
           "parse_persons_list", "parse_play", "parse_plays", "link_mentions", "build_knowledge_graph",
           "character_id", "TITLE_RANKS", "ROLE_NOUNS"]

# ---- vocabulary ------------------------------------------------------------------------------------------
#: relation word (lower case) -> relation; the entry described is the head, the person named after it the tail
KIN = {"son": "son_of", "sons": "son_of", "daughter": "daughter_of", "daughters": "daughter_of",
       "father": "father_of", "mother": "mother_of", "brother": "brother_of", "brothers": "brother_of",
       "half-brother": "brother_of", "sister": "sister_of", "sisters": "sister_of", "wife": "wife_of",
       "husband": "husband_of", "widow": "widow_of", "nephew": "nephew_of", "niece": "niece_of",
       "uncle": "uncle_of", "great-uncle": "great_uncle_of", "aunt": "aunt_of", "cousin": "cousin_of",
       "kinsman": "kinsman_of", "kinsmen": "kinsman_of", "kinswoman": "kinsman_of"}
SERVICE = {"servant": "servant_to", "servants": "servant_to", "man": "servant_to", "page": "servant_to",
           "steward": "servant_to", "nurse": "servant_to", "usher": "servant_to", "physician": "servant_to",
           "chamberlain": "servant_to", "secretary": "servant_to", "tutor": "servant_to",
           "attendant": "attendant_on", "attendants": "attendant_on", "attending": "attendant_on",
           "waiting-maid": "attendant_on", "waiting-woman": "attendant_on", "waiting-gentlewoman": "attendant_on",
           "woman": "attendant_on", "maid": "attendant_on",
           "friend": "friend_to", "friends": "friend_to", "follower": "follower_of", "followers": "follower_of",
           "retainer": "follower_of", "retainers": "follower_of", "lieutenant": "officer_of",
           "lieutenant-general": "officer_of", "ancient": "officer_of",
           "suitor": "suitor_to", "suitors": "suitor_to", "mistress": "mistress_of", "mistresses": "mistress_of"}
ROLE_RELATIONS = {**KIN, **SERVICE}
#: ranks whose "<rank> of <place>" gives the relation "<rank>_of"
TITLE_RANKS = ("king", "queen", "prince", "princess", "duke", "archduke", "duchess", "earl", "count", "countess",
               "marquess", "archbishop", "bishop", "governor", "emperor")
_RANK_ALIASES = {"marquis": "marquess"}
#: ranks a heading or a target may use alone ("KING.", "the Duke"); cardinal/friar have no place
RANK_WORDS = set(TITLE_RANKS) | {"marquis", "cardinal", "friar", "dauphin", "abbot", "abbess", "lord", "lady"}
HONORIFICS = RANK_WORDS | {"sir", "master", "mistress", "mrs", "don", "signior", "doctor", "dame", "saint"}
_PEER_RANKS = ("duke", "archduke", "earl", "marquess", "count", "archbishop", "bishop", "cardinal")
_CLERGY = ("archbishop", "bishop", "cardinal")             # called by their see, after the lay peers
_SMALL = {"of", "the", "and", "de", "la", "le", "du", "a", "an", "to", "in", "on"}
_ADJECTIVES = {"old", "young", "another", "other", "the", "a", "an"}
_COUNT_WORDS = {"two", "three", "four", "five", "several", "other", "others", "many", "some", "all", "both", "sundry"}
_ORDINALS = {"1": "First", "2": "Second", "3": "Third", "4": "Fourth", "5": "Fifth", "6": "Sixth", "i": "First",
             "first": "First", "second": "Second", "third": "Third", "fourth": "Fourth", "fifth": "Fifth",
             "sixth": "Sixth"}
_ROMAN = {"first": "I", "second": "II", "third": "III", "fourth": "IV", "fifth": "V", "sixth": "VI",
          "seventh": "VII", "eighth": "VIII"}
_ROMAN_NUMERALS = {"i", "ii", "iii", "iv", "v", "vi", "vii", "viii", "ix", "x", "xi"}
#: adjectives of headings like "FRENCH KING." -> the place of the rank
_PLACE_ADJECTIVES = {"french": "France", "english": "England"}
#: spellings this edition mixes within one name (checked in the text: "Gloster" in the lists, "Glou." in Lear)
SPELLING_VARIANTS = {"gloster": "gloucester", "gloucester": "gloster",
                     # English and Latin forms of one name: "POMPEY." for Sextus Pompeius, "ANTONY." for Marcus Antonius
                     "pompey": "pompeius", "pompeius": "pompey", "antony": "antonius", "antonius": "antony"}
FEMALE_WORDS = {"queen", "lady", "duchess", "countess", "princess", "mistress", "mrs", "widow", "daughter",
                "daughters", "wife", "mother", "sister", "niece", "aunt", "heiress", "shepherdess", "wench", "nun",
                "maid", "woman", "gentlewoman", "hostess", "abbess", "witch", "bawd", "courtezan", "waiting-maid",
                "waiting-woman", "waiting-gentlewoman", "kinswoman", "dame"}
MALE_WORDS = {"king", "prince", "duke", "earl", "lord", "sir", "son", "sons", "father", "brother", "brothers",
              "husband", "nephew", "uncle", "great-uncle", "man", "friar", "cardinal", "bishop", "archbishop",
              "count", "marquess", "marquis", "don", "boy", "gentleman", "kinsman", "emperor", "dauphin", "abbot"}
#: nouns that make a heading an anonymous role; a play's own group lines add to these
ROLE_NOUNS = (
    "messenger servant lord lady gentleman gentlewoman citizen soldier officer senator guard captain murderer "
    "watch watchman sailor musician attendant page boy herald porter keeper gaoler jailer clown fool player "
    "doctor priest friar fairy witch outlaw fisherman pirate knight serving-man servingman drawer carrier "
    "traveller beadle groom sheriff mayor lieutenant apparition ghost spirit shepherd mariner boatswain master "
    "tailor haberdasher huntsman stranger bandit conspirator patrician roman volsce goth aedile tribune plebeian "
    "prentice petitioner neighbour townsman clerk post mate scout sentinel warder general legate sergeant lawyer "
    "nobleman son father mother daughter brother gardener ambassador pursuivant scrivener crier scribe "
    "secretary surveyor chancellor chamberlain vintner dancer commoner courtier merchant painter jeweller poet "
    "son-in-law man woman child children voice myrmidon dane goths romans tyrian dutchman spaniard frenchman "
    "lords citizens servants senators soldiers gentlemen ladies murderers knights outlaws players tribunes "
    "conspirators patricians aediles plebeians danes fairies witches ghosts spirits princes brothers "
    "watchmen serving-men servingmen banditti commons petitioners strangers neighbours mariners guards "
    "apparitions officers musicians attendants messengers sailors pirates fishermen huntsmen nymph nymphs "
    "reaper reapers soothsayer chorus usher men women").split()
_GROUP_HEADS = {"all", "both", "some", "three", "others", "several"}
#: section headings: neither a speaker nor a scene heading, but nothing is adjacent across them
_SECTIONS = {"prologue", "the prologue", "epilogue", "induction", "dumb show", "song", "[song]",
             "the order of the coronation", "spring", "winter"}

_PERSONS_HEADER = re.compile(r"^\s*(?:persons\s+represented|dramatis\s+person(?:ae|æ))\b", re.I)
_LIST_END = re.compile(r"^\s*(?:the\s+)?scene\b", re.I)
_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*")
_CONNECTIVES = {"and", "of", "to", "the", "on", "upon", "by", "with", "in", "a", "an", "for", "old", "young", "as",
                "other"}


def character_id(play: str, name: str) -> str:
    """The entity id of a person of ``play``: "Hamlet::Polonius"."""
    return f"{play}::{name}"


def _words(s: str) -> list[str]:
    return _WORD.findall(s)


def _norm(s: str) -> str:
    """Lower case, "Mrs." -> "mistress", dots and brackets dropped, whitespace collapsed: the key of an alias."""
    s = s.lower().replace("mrs.", "mistress ").replace("mrs ", "mistress ")
    s = re.sub(r"[.\[\]{}()!?;:\"]", " ", s)
    s = re.sub(r"(?<=[a-z])\.(?=[a-z])", ". ", s)
    return " ".join(s.replace(",", " ").replace("-", " ").split())


def _is_caps(word: str) -> bool:
    """A word in capitals ("HAMLET", "M.ANTONY", "V"): two or more letters, or a Roman numeral."""
    letters = [c for c in word if c.isalpha()]
    if word.strip(".") in ("I", "V", "X"):
        return True
    return len(letters) >= 2 and all(c.isupper() for c in letters)


def _title_case(name: str) -> str:
    """"LADY MACBETH" -> "Lady Macbeth", "DUKE OF VENICE" -> "Duke of Venice", "CHARLES VI" -> "Charles VI",
    "M.ANTONY" -> "M. Antony", "Mrs. Quickly" -> "Mistress Quickly"; words already in mixed case are kept."""
    name = re.sub(r"(?<=[A-Za-z])\.(?=[A-Za-z])", ". ", name)
    out = []
    for i, w in enumerate(name.split()):
        lw = w.lower()
        if lw.strip(".") in _ROMAN_NUMERALS and i > 0 and (w.isupper() or lw.strip(".") != "i"):
            out.append(w.upper())
        elif i > 0 and lw in {"of", "the", "and", "de", "la", "du", "to", "a", "an", "by", "with", "in", "on", "at"}:
            out.append(lw)
        elif _is_caps(w) or w.islower():
            out.append("-".join(p[:1].upper() + p[1:].lower() for p in w.split("-")))
        else:
            out.append(w)
    return " ".join(out).replace("Mrs.", "Mistress").replace("Mrs ", "Mistress ")


def _gender(name: str, desc: str = "") -> str | None:
    """"f", "m" or None from the words of the name and of each description segment before its first
    preposition ("Servant to the Countess" says nothing of the servant's sex; "Daughter to Lear" does)."""
    words = [w.lower().strip(".") for w in _words(name)]
    for seg in re.split(r"[,;]|\s+-\s+", desc or ""):
        words += [w.lower() for w in _words(re.split(r"\b(?:to|of|on|upon|with|by|for|in)\b", seg, maxsplit=1)[0])]
    ws = set(words)
    f, m = bool(ws & FEMALE_WORDS), bool(ws & MALE_WORDS)
    return "f" if f and not m else "m" if m and not f else None


def _edit1(a: str, b: str) -> bool:
    """True when a and b differ by exactly one substitution, insertion or deletion."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b)) == 1
    if len(a) > len(b):
        a, b = b, a
    return any(a == b[:i] + b[i + 1:] for i in range(len(b)))


# ---- the persons list ------------------------------------------------------------------------------------
@dataclass
class Person:
    """One person of a persons list: ``name`` as printed (title-cased), the entry's ``description``, the line
    index (into ``text.split("\\n")``) and the entry's full ``text``; ``aliases`` are other names the list
    gives ("surnamed Hotspur", "or ROBIN GOODFELLOW", "formerly Mistress Quickly", "afterwards King Edward IV");
    ``gender`` ("f", "m" or None) is guessed from the name and the relation words of the description."""
    name: str
    description: str
    line_no: int
    text: str
    aliases: list[str] = field(default_factory=list)
    gender: str | None = None
    pronoun_described: bool = False        # "his son", "her Sister": not a referent for a later pronoun
    id_name: str = ""                      # the name in the entity id (name, or name + description if shared)
    header: str = ""                       # the header line above it, if any ("Suitors to Bianca", "His sons:")


@dataclass
class Drop:
    """A reference of the persons list that was not turned into a triple, and why."""
    line_no: int
    text: str
    reason: str


@dataclass
class PersonsList:
    """A parsed persons list: ``persons``; ``relations`` (person index, relation, person index); ``titles``
    (person index, "<rank>_of", place); ``ranks`` (person index, rank, place or None) for "the King" and "KING.";
    ``groups`` (the group lines); ``drops``; ``span`` = (first, end) line indices of its entries."""
    play: str
    persons: list[Person]
    relations: list[tuple[int, str, int]]
    titles: list[tuple[int, str, str]]
    ranks: list[tuple[int, str, str | None]]
    groups: list[str]
    drops: list[Drop]
    span: tuple[int, int]


def find_persons_list(text: str, play: str = "?") -> tuple[int, int]:
    """(first, end) line indices of the list's entries: after its header line ("PERSONS REPRESENTED.",
    "Dramatis Personae", ...), up to the "SCENE: ..." line that closes every list in this edition.

    Raises ValueError naming the play when there is no header in the first 80 lines or no SCENE line
    within 150 lines of it.
    """
    lines = text.split("\n")
    head = next((i for i, ln in enumerate(lines[:80]) if _PERSONS_HEADER.match(ln)), None)
    if head is None:
        raise ValueError(f"{play}: no persons list (no 'PERSONS REPRESENTED' / 'DRAMATIS PERSONAE' line "
                         f"in its first 80 lines)")
    end = next((i for i in range(head + 1, min(len(lines), head + 150)) if _LIST_END.match(lines[i])), None)
    if end is None:
        raise ValueError(f"{play}: the persons list after line {head + 1} ({lines[head].strip()!r}) has no "
                         f"'SCENE' line within 150 lines")
    return head + 1, end


# -- layout: lines -> entries
def _is_column_line(line: str) -> bool:
    """A name, then (a comma and) three or more spaces or a brace, then its description:
    "SEXTUS POMPEIUS    Triumvir"."""
    return bool(re.match(r"^\S.*?\S,?(?:\s{3,}|\s*\})", line))


_KING_TAIL = re.compile(r"^[A-Z][a-z]+(?:\s+[IVX]+)?\s*(?:[.;].*)?$")


def _continues(prev: str, line: str) -> bool:
    """Whether ``line`` continues the entry of ``prev``: it is indented or starts in lower case, or ``prev``
    ends in a comma, hyphen or semicolon or a connective word ("and", "of", "to", "other", ...), or ``prev`` ends
    in "King"/"Queen" and ``line`` is a name and numeral ("bastard son to King / Richard I.").  Two column lines
    never continue each other (``_list_entries`` merges their descriptions).  Fails on a list that breaks an
    entry without such a sign."""
    if _is_column_line(prev) and _is_column_line(line):
        return False
    if line[:1].isspace() or line.lstrip()[:1].islower():
        return True
    p = prev.rstrip()
    if p.endswith((",", "-", ";")):
        return True
    last = p.split()[-1] if p.split() else ""
    return last.lower() in _CONNECTIVES or (last in ("King", "Queen") and bool(_KING_TAIL.match(line.strip())))


_ENTRY_SPLIT = re.compile(r"\.\s{2,}(?=[A-Z])|\.\s+(?=(?:A|An|Another|Two|Three)\s)|\s{3,}(?=(?:A|An)\s+[A-Z])"
                          r"|;\s+(?=[Aa]nother\s)")


@dataclass
class _Row:
    line_no: int
    text: str
    column: bool


def _list_entries(lines: list[str], first: int, end: int) -> list[_Row]:
    """The list's entries: continuation lines joined (also across one blank line after a trailing "to"/"of"/
    "and": "afterwards married to / (blank) / King Henry"), the description of a column block shared by all its
    names ("ANTIPHOLUS OF EPHESUS,  Twin brothers and sons to Aegion and / ANTIPHOLUS OF SYRACUSE,  and
    Aemelia, ..."), and several entries on one line split ("THOMAS HORNER, an armourer.  PETER, his man.")."""
    rows: list[_Row | None] = []
    for i in range(first, end):
        ln = lines[i].rstrip()
        if re.match(r"^\s*persons\s+in\s+the\b", ln, re.I):
            continue
        if not ln.strip():
            last = rows[-1] if rows else None
            if last is not None and not re.search(r"\b(?:to|of|and|the)$", last.text.rstrip()):
                rows.append(None)                          # a blank line ends an entry
            continue
        last = rows[-1] if rows else None
        if last is not None and _continues(last.text, ln):
            last.text = last.text.rstrip() + " " + ln.strip()
            continue
        rows.append(_Row(i, ln, _is_column_line(ln)))
    kept = [r for r in rows if r is not None]
    k = 0
    while k < len(kept):                                   # column blocks with one description over two lines
        j = k
        while (j + 1 < len(kept) and kept[j].column and kept[j + 1].column
               and kept[j + 1].line_no == kept[j].line_no + 1
               and _column_desc_continues(kept[j].text, kept[j + 1].text)):
            j += 1
        if j > k:
            shared = ""
            for r in kept[k:j + 1]:
                d = _split_column(r.text)[1]
                if shared.endswith(" and") and d.startswith("and "):
                    d = d[4:]
                shared = f"{shared} {d}".strip()
            for r in kept[k:j + 1]:
                r.text = _split_column(r.text)[0] + ",   " + shared
        k = j + 1
    out = []
    for r in kept:
        for part in _ENTRY_SPLIT.split(r.text.strip()):
            if part.strip():
                out.append(_Row(r.line_no, part.strip() if r.column else " ".join(part.split()), r.column))
    return out


def _split_column(line: str) -> tuple[str, str]:
    m = re.match(r"^(\S.*?\S),?(?:\s{3,}|\s*\}\s*)(.*)$", line)
    return (m.group(1).rstrip(","), m.group(2).strip()) if m else (line.strip(), "")


def _column_desc_continues(a: str, b: str) -> bool:
    """The description column of line ``a`` runs on into line ``b``: it ends in a comma or a connective."""
    da = _split_column(a)[1]
    last = da.split()[-1].lower() if da.split() else ""
    return da.endswith(",") or last in _CONNECTIVES


# -- is a word a common noun of this play?
class _WordStats:
    """Counts, in a play's text, each word in lower case and each word capitalised in mid-line (where only
    a name or a title is capitalised).  A word is *common* when it is seen in lower case more often."""

    def __init__(self, text: str):
        words = _WORD.findall(text)
        self.lower: dict[str, int] = Counter(w for w in words if w.islower())
        mid = re.sub(r"(?m)^[^A-Za-z\n]*[A-Za-z][A-Za-z'\-]*", "", text)         # each line without its first word
        self.capital: dict[str, int] = Counter(w.lower() for w in re.findall(r"\b[A-Z][a-z][a-z'\-]*", mid))

    def common(self, word: str) -> bool:
        w = word.lower()
        return self.lower.get(w, 0) > self.capital.get(w, 0)

    def plural_noun(self, word: str) -> bool:
        """A plural common noun: "Lords", "Players", "Kinsmen", "Magnificoes"; not "Cassius", "Rivers" (a name
        in Henry VI: capitalised in mid-line more often than "rivers" is written), "Hymen"."""
        w = word.lower().strip(".,:;")
        if w in ROLE_NOUNS and _plural_word(w):
            return True
        if not _plural_word(w):
            return False
        sing = _singular(w)
        if sing in ROLE_NOUNS:
            return True
        low = self.lower.get(w, 0) + self.lower.get(sing, 0)
        return low > self.capital.get(w, 0) + self.capital.get(sing, 0)


def _is_group(text: str, stats: _WordStats, caps_list: bool = False) -> bool:
    """A group line: it starts with a count word ("Two Clowns", "Other Spirits", "Several Lords"), or the last word
    of its first item (cut at the first comma or at "to"/"of"/"attending"/...) is a plural common noun
    ("Lords, Ladies, ...", "Servants to Cornwall", "Roman and Volscian Senators, ..."), or, in a list that
    prints names in capitals, it starts with a word that is not ("Magnificoes of Venice, Officers ...,
    Gaoler, Servants to Portia", "Tailor, Haberdasher, and Servants ...") and a later item is plural.  The name
    part of a column line ("LUCILIUS      Servants to Timon.") is what is tested."""
    if _is_column_line(text):
        text = _split_column(text)[0]
    ws = text.split()
    if not ws:
        return False
    if ws[0].lower().strip(",.") in _COUNT_WORDS and len(ws) > 1:
        return True
    first = re.split(r",|;|\}|\s(?:to|of|on|attending|with|in|for|belonging|appearing|presented|relations)\s",
                     text, maxsplit=1)[0]
    fw = _words(first)
    if not fw:
        return False
    if stats.plural_noun(fw[-1]):
        return not (len(fw) > 1 and fw[-2].lower() in HONORIFICS)      # "LORD RIVERS", "EARL RIVERS"
    if caps_list and not _is_caps(fw[0]) and fw[0].lower() not in {"a", "an", "the"}:
        later = [_words(re.split(r"\s(?:to|of|on|attending|with|in|for)\s", it, maxsplit=1)[0])
                 for it in text.split(",")[1:]]
        return any(w and stats.plural_noun(w[-1]) for w in later)
    return False


# -- one entry: names and description
def _split_name(text: str) -> tuple[list[str], str, list[str]]:
    """(names, description, split-off parts) of one entry.

    A brace, a column gap or " - " ends the name.  Caps-style entries ("BARDOLPH, PISTOL, NYM, Followers of
    Falstaff") take every leading comma item in capitals as a name, except a "RANK OF PLACE" item (a title:
    "HENRY, PRINCE OF WALES"), keeping only the capitals of "DICK the butcher"; other entries take the first
    comma item.  "X and Y" in capitals are two names.  An entry with no comma whose first word is a role
    ("Nurse to Juliet", "QUEEN TO KING RICHARD", "GENTLEWOMAN attending on Virgilia") is named by the role and
    keeps the rest as description; "His Page" is named "Page" with the description "his Page".  "... and his
    Son", "and a Sergeant-at-Arms", "and several other Apparitions" are split off (returned apart).
    """
    text = text.strip().rstrip(".").strip()
    split_off = []
    if "}" in text:
        names, desc = text.split("}", 1)
        return [n for n in re.split(r",\s*|\s+and\s+", names.strip(" ,")) if n.strip()], desc.strip(" ,"), []
    m = re.match(r"^(\S.*?\S),?(?:\s{3,}|\s+-\s+)(.*)$", text)
    if m and "," not in m.group(1):
        return [n for n in re.split(r",\s*|\s+and\s+", m.group(1)) if n.strip()], m.group(2).strip(), []
    items = [s.strip() for s in text.split(",")]
    tail = re.search(r"\s+and\s+((?:his|her|a|an|several|other|three|two)\b.*)$", items[0], re.I)
    if tail:
        split_off.append("and " + tail.group(1))
        items[0] = items[0][:tail.start()]
    first_words = _words(items[0])
    caps_style = bool(first_words) and _is_caps(first_words[0])
    if caps_style and len(items) > 1:          # "HOSTESS of a tavern in Eastcheap, formerly ...": capitals only
        ws = items[0].split()
        k = _caps_prefix(ws)
        if 0 < k < len(ws):
            items[0:1] = [" ".join(ws[:k]), " ".join(ws[k:])]
    if len(items) == 1:
        ws = items[0].split()
        role = re.match(r"^((?:an?\s+|the\s+)?(?:old\s+|young\s+)?([\w-]+))\s+((?:to|attending|attendant)\b.*)$",
                        items[0], re.I)
        if role and (role.group(2).lower() in ROLE_RELATIONS or role.group(2).lower() in ROLE_NOUNS
                     or role.group(2).lower() in RANK_WORDS):
            return [role.group(1)], role.group(2) + " " + role.group(3), split_off
        pron = re.match(r"^(his|her)\s+([\w-]+)$", items[0], re.I)
        if pron:
            return [pron.group(2)], items[0], split_off
        if caps_style:        # "HOST of the Garter Inn": the capitals are the name
            k = _caps_prefix(ws)
            if 0 < k < len(ws):
                return [" ".join(ws[:k])], " ".join(ws[k:]), split_off
        return [items[0]], "", split_off
    names = [items[0]]
    k = 1
    if caps_style:
        while k < len(items):
            item = re.sub(r"^and\s+", "", items[k])
            item = re.sub(r"^(?:young|old)\s+(?=[A-Z]{2})", "", item)      # "young CATO"
            ws = _words(item)
            if not ws or not _is_caps(ws[0]) or item.lower() in ("etc", "&c") or re.match(
                    r"^(?:" + "|".join(sorted(RANK_WORDS)) + r")\s+of\b", item, re.I):
                if item.lower().rstrip(".") in ("etc", "&c"):
                    k += 1
                    continue
                break
            caps = []
            for w in item.split():
                if _is_caps(w) or (caps and w.lower() in {"of", "de", "la"}):
                    caps.append(w)
                elif caps:
                    break
            names.append(" ".join(caps))
            k += 1
    if not caps_style:                         # "A Sea-Captain, Master, and Master's-Mate, and WALTER WHITMORE"
        for it in items[1:]:
            m = re.match(r"^and\s+((?:[A-Z]{2,}\s*)+)$", it)
            if m:
                names.append(m.group(1).strip())
                items.remove(it)
    expanded = []
    for n in names:
        expanded += [p for p in re.split(r"\s+and\s+", n) if p.strip()] if caps_style else [n]
    rest = items[k:]
    while rest and re.match(r"^and\s+(?:his|her|a|an)\s+[\w-]+$", rest[-1], re.I):   # "Porter, and his Man"
        split_off.append(rest.pop())
    return expanded, ", ".join(rest), split_off


def _caps_prefix(ws: list[str]) -> int:
    """How many leading words of an entry are its name in capitals ("KING HENRY the Fourth" counts its
    ordinal; "HOSTESS of a tavern" stops at "of")."""
    k = 0
    while k < len(ws):
        if _is_caps(ws[k]):
            k += 1
        elif ws[k].lower() in _SMALL and k + 1 < len(ws) and _is_caps(ws[k + 1]):
            k += 1
        elif k > 0 and ws[k].lower() == "the" and k + 1 < len(ws) and ws[k + 1].lower().strip(".") in _ROMAN:
            k += 2
        else:
            break
    return k


def _segments(desc: str) -> list[tuple[str, str]]:
    """(segment, separator before it) of a description: split at commas, semicolons, " - " and before an
    "and" that starts a new relation ("Daughter to Brabantio | and Wife to Othello")."""
    out, sep = [], "start"
    for part in re.split(r"(\s*[,;]\s*|\s+-\s+|\s+(?=and\s+(?:his\s+|her\s+|a\s+|an\s+|the\s+)?[\w-]+\s+"
                         r"(?:to|of|on|upon)\b)|\s+(?=afterwards\b))", desc or ""):
        if part is None:
            continue
        if re.fullmatch(r"\s*[,;]\s*|\s+-\s+|\s+", part):
            sep = part.strip() or "and"
            continue
        if part.strip():
            out.append((part.strip(), sep))
    return out


@dataclass
class _Clause:
    relation: str
    targets: list[str]
    pronoun: str | None = None          # "his" / "her" when the clause names no target
    inverse: bool = False               # "beloved of X": the relation runs from X to the entry
    plural: bool = False                # "his sons" (every name of the entry) vs "his brother"


_REL_WORDS = "|".join(sorted(map(re.escape, ROLE_RELATIONS), key=len, reverse=True))
_REL_CLAUSE = re.compile(
    r"^(?:(?P<pron>his|her|their)\s+)?(?:(?:a|an|the)\s+)?(?P<adj>(?:[\w'-]+\s+){0,2}?)"
    r"(?P<word>" + _REL_WORDS + r")(?:\s+of\s+honou?r)?(?:\s+(?P<prep>to|of|on|upon|unto))?\s*(?P<target>.*)$", re.I)
_POSSESSIVE = re.compile(r"^(?:one\s+of\s+)?(?P<owner>[A-Z][\w-]*)'s?\s+(?:\w+\s+)?(?P<word>" + _REL_WORDS + r")$",
                         re.I)
_OK_ADJ = {"bastard", "elder", "younger", "twin", "false", "true", "loving", "faithful", "young", "old", "noble",
           "gentleman", "waiting", "neighbour", "and", "clownish", "rich", "lord", "lady", "gentle", "great"}
_SKIP_ADJ = {"reputed", "supposed", "disguised", "personate", "presented", "late", "former", "like"}


def _clause(segment: str) -> _Clause | None:
    """The relation one description segment states, if any (see the module docstring for the words).
    Segments with "reputed", "supposed", "late" ... state no relation; "a Page", "Mistress Overdone" (a role
    or a name, with no "to"/"his") neither."""
    s = segment.strip().strip(".:").strip()
    s = re.sub(r"^(?:and|afterwards|now|formerly)\s+", "", s, flags=re.I)
    if re.search(r"\bin love with\s+", s, re.I):
        return _Clause("loves", _targets(re.split(r"in love with\s+", s, flags=re.I)[1]))
    for pattern, rel, inverse in ((r"^(?:\w+\s+)?beloved\s+(?:of|by)\s+(.+)$", "loves", True),
                                  (r"^(?:\w+\s+)?be(?:th)?rothed\s+to\s+(.+)$", "betrothed_to", False),
                                  (r"^(?:\w+\s+)?married\s+to\s+(.+)$", "married_to", False),
                                  (r"^queen\s+to\s+(.+)$", "wife_of", False),
                                  (r"^(?:(?:a|an|the)\s+)?(?:[\w-]+\s+)?attend(?:ing|ant|ants)\s+(?:on|upon)\s+(.+)$",
                                   "attendant_on", False)):
        m = re.match(pattern, s, re.I)
        if m:
            return _Clause(rel, _targets(m.group(1)), inverse=inverse)
    m = _POSSESSIVE.match(s)
    if m:
        return _Clause(ROLE_RELATIONS[m.group("word").lower()], [m.group("owner")])
    m = _REL_CLAUSE.match(s)
    if not m:
        return None
    adj = {w.lower() for w in m.group("adj").split()}
    if adj & _SKIP_ADJ or not adj <= _OK_ADJ:
        return None
    word, prep, target = m.group("word").lower(), (m.group("prep") or "").lower(), m.group("target").strip()
    pron = (m.group("pron") or "").lower() or None
    if not prep and not pron:
        return None                     # "a Page", "Mistress Overdone", "Servant Gregory": no relation phrase
    if prep and not target or pron and target:
        return None
    plural = _plural_word(word) and word not in ("mistress",)
    return _Clause(ROLE_RELATIONS[word], _targets(target) if target else [], pronoun=pron, plural=plural)


def _targets(text: str) -> list[str]:
    """Names in "Antonio and Bassanio", cut before a qualifier ("the Queen by a former husband" -> the Queen)."""
    text = re.split(r"\s+(?:by|in|but|at|whom|who|during|afterwards)\s+|\s*[,;(]", text.strip(), maxsplit=1)[0]
    text = re.sub(r"^([A-Z]\w+)\s+the\s+[A-Z]\w+$", r"\1", text.strip().rstrip("."))   # "Marcus the Tribune"
    if not text:
        return []
    if re.match(r"^(?:the\s+)?(?:two|three|both)\s", text, re.I):
        return [text]                                      # a plural target: kept whole, dropped later
    return [t.strip() for t in re.split(r"\s+and\s+", text) if t.strip()]


_RANK_RE = "|".join(TITLE_RANKS + ("marquis",))
_TITLE = re.compile(r"^(?:(?i:afterwards|titular|the\s+right|the\s+usurping|the|now|and|late)\s+)*"
                    r"(?P<rank>(?i:" + _RANK_RE + r"))\s+(?i:of)\s+(?:(?i:the)\s+)?"
                    r"(?P<place>[A-Z][\w'-]*(?:\s+(?:OF\s+|of\s+)?[A-Z][\w'-]*)*)\s*$")
_RANK_ONLY = re.compile(r"^(?:(?:afterwards|and|the)\s+)*(?P<rank>cardinal|dauphin|emperor)$", re.I)


@dataclass
class _Entry:
    first: int                          # index of its first person
    count: int                          # how many persons it names
    items: list                         # ("clause", segment, _Clause) | ("apposition", segment, title or None)
    header: tuple | None                # (clauses, pronoun referent) of the header above it
    line_no: int
    text: str


def parse_persons_list(text: str, play: str = "?", stats: "_WordStats | None" = None) -> PersonsList:
    """Parse the persons list at the start of ``text`` (see the module docstring for the rules).

    Two passes: the first reads every entry (group, header or persons; names, description segments, titles,
    aliases); the second resolves the relation clauses against the whole list.  Raises ValueError naming the
    play if the list cannot be found.
    """
    lines = text.split("\n")
    first, end = find_persons_list(text, play)
    stats = stats or _WordStats("\n".join(lines[end:]))
    rows = _list_entries(lines, first, end)
    plist = PersonsList(play, [], [], [], [], [], [], (first, end))
    persons = plist.persons
    entries: list[_Entry] = []
    header = None
    prev_desc = ""
    caps_list = sum(_is_caps((_words(r.text) or ["x"])[0]) for r in rows) > len(rows) / 2
    for n, row in enumerate(rows):
        etext = row.text
        if _is_group(etext, stats, caps_list):
            nxt = rows[n + 1].text if n + 1 < len(rows) else ""
            if _is_header(etext, nxt, stats):
                clauses = [c for c in (_clause(s) for s, _ in _segments(etext)) if c]
                header = (clauses, _pronoun_referent(persons, clauses, len(persons)), " ".join(etext.split()))
            else:
                header = None
                plist.groups.append(" ".join(etext.split()))
            continue
        names, desc, split_off = _split_name(etext)
        # "Earl, afterwards Duke, of Somerset" -> "Earl of Somerset, afterwards Duke of Somerset"
        desc = re.sub(r"\b(\w+),\s+(?:and\s+)?afterwards\s+(\w+),\s+of\s+([A-Z][\w-]+)",
                      r"\1 of \3, afterwards \2 of \3", desc)
        if desc and re.fullmatch(r'[\s"]*', desc):
            desc = prev_desc                               # a ditto mark: the description above
        prev_desc = desc
        if header is not None and not _in_header_scope(names[0] if names else "", desc):
            header = None
        names = [x for x in (_clean_name(x) for x in names) if x]
        if not names:
            continue
        items, aliases = _read_description(desc, row.line_no, plist)
        base = len(persons)
        for name in names:
            p = Person(_title_case(name), desc, row.line_no, " ".join(etext.split()), list(aliases),
                       _gender(name, desc))
            p.pronoun_described = header is not None or any(
                kind == "clause" and c.pronoun for kind, _, c in items) or bool(re.match(r"^(?:his|her)\b", desc, re.I))
            p.header = header[2] if header is not None else ""
            if re.search(r"\bbastard\s+(?:son|brother)\b", desc, re.I):
                p.aliases.append("Bastard")                # "BASTARD." in King John; Much Ado's Don John
            persons.append(p)
        for k, name in enumerate(names):                   # the name's own title: "DUKE OF VENICE", "Earl of Kent"
            t = _TITLE.match(name.strip())
            if t:
                _add_title(plist, base + k, t.group("rank"), t.group("place"))
            elif name.split()[0].lower() in RANK_WORDS:
                plist.ranks.append((base + k, _RANK_ALIASES.get(name.split()[0].lower(), name.split()[0].lower()),
                                    None))
            for owner, word in re.findall(r"(\w+)'s\s+(" + "|".join(KIN) + r")\b", name, re.I):
                items.append(("clause", name, _Clause(KIN[word.lower()], [owner])))
            kin = re.match(r"^(?:the\s+)?(?:young\s+|old\s+)?(son|daughter)\s+of\s+(.+)$", name, re.I)
            if kin:
                items.append(("clause", name, _Clause(KIN[kin.group(1).lower()], [kin.group(2)])))
        for kind, seg, what in items:
            if kind == "title":
                for k in range(len(names)):
                    _add_title(plist, base + k, *what)
            elif kind == "rank":
                for k in range(len(names)):
                    plist.ranks.append((base + k, what, None))
        entries.append(_Entry(base, len(names), items, header, row.line_no, " ".join(etext.split())))
        for seg in split_off:       # "Porter, and his Man"; "Master-Gunner of Orleans and his Son"
            m = re.match(r"^and\s+(?:(his|her)\s+|an?\s+)?([\w-]+)", seg.strip(), re.I)
            if not m or m.group(2).lower() in _COUNT_WORDS:
                continue
            persons.append(Person(_title_case(m.group(2)), seg, row.line_no, " ".join(etext.split()), [],
                                  _gender(m.group(2), ""), bool(m.group(1))))
            rel = ROLE_RELATIONS.get(m.group(2).lower())
            items2 = [("owner", seg, (rel, base))] if m.group(1) and rel else []
            entries.append(_Entry(len(persons) - 1, 1, items2, None, row.line_no, " ".join(etext.split())))
    _share_column_descriptions(plist, entries, rows)
    _name_ids(persons)
    resolver = _ListResolver(plist, stats)
    mutual: dict[str, list[int]] = {}
    for e in entries:
        heads = list(range(e.first, e.first + e.count))
        if e.header is not None:
            for c in e.header[0]:
                _apply(plist, resolver, heads, c, e.header[1], e.line_no, e.text)
        _resolve_items(plist, resolver, e, heads, mutual)
    for key, idx in mutual.items():                        # "Twin brothers" of one column block
        rel = key.split("|")[0]
        for a in idx:
            for b in idx:
                if a != b:
                    plist.relations.append((a, rel, b))
    plist.relations = list(dict.fromkeys(plist.relations))
    plist.titles = list(dict.fromkeys(plist.titles))
    plist.ranks = list(dict.fromkeys(plist.ranks))
    return plist


def _read_description(desc: str, line_no: int, plist: PersonsList) -> tuple[list, list[str]]:
    """Items of a description, in order, and the aliases it gives.

    Items: ("clause", segment, _Clause), ("title", segment, (rank, place)), ("rank", segment, rank),
    ("apposition", segment, (rank, place) or None).  An *apposition* describes the person a clause just named
    by a proper name, not the entry: after "son to GEFFREY" / "widow to Edward" / "Daughter to Alphonso", the
    comma segments that follow, if the first is a title or starts with "the"/"late" ("late Duke of Bretagne",
    "Prince of Wales", "King of Castile", "the elder brother to King John"), up to a segment starting with
    "and"/"afterwards" or after a semicolon.
    """
    items, aliases = [], []
    prev_proper, in_apposition = False, False
    for seg, sep in _segments(desc):
        low = seg.lower()
        fresh = sep in (";", "and") or bool(re.match(r"^(?:and|afterwards|now|formerly)\b", low))
        if in_apposition and not fresh:
            c = _clause(seg)
            items.append(("apposition", seg, ("kin", c) if c is not None and c.relation in ("son_of", "daughter_of")
                          else None))
            continue
        in_apposition = False
        t = _TITLE.match(seg.strip().rstrip("."))
        if prev_proper and sep == "," and not fresh and (t or re.match(r"^(?:the|late)\b", low)):
            in_apposition = True
            late = bool(re.match(r"^late\b", low))
            items.append(("apposition", seg, (t.group("rank").lower(), t.group("place"), late) if t else None))
            continue
        prev_proper = False
        alias = re.match(r"^\(?(?:surnamed|called\s+also|commonly\s+called|or|formerly|called)\s+(.+?)\)?$",
                         seg.strip(), re.I)
        if alias:
            aliases.append(_title_case(alias.group(1).strip(" .)")))
            continue
        after = re.match(r"^(?:afterwards|and\s+afterwards)\s+((?i:king|queen)\s+[A-Z][\w]*(?:\s+[IVX]+)?)\.?$",
                         seg.strip())
        if after:
            aliases.append(_title_case(after.group(1)))
            continue
        disguise = re.search(r"\bdisguised\s+under\s+the\s+name\s+of\s+([A-Z]\w+)$", seg.strip())
        if disguise:
            aliases.append(_title_case(disguise.group(1)))
            continue
        c = _clause(seg)
        if c is not None:
            items.append(("clause", seg, c))
            if re.match(r"^(?:afterwards\s+)?queen\s+to\b", low):
                items.append(("rank", seg, "queen"))       # "Queen to Leontes": the play's queen
            tgt = c.targets[0] if c.targets else ""
            prev_proper = bool(tgt) and tgt[:1].isupper() and not re.match(r"^(?:the|her|him|his)\b", tgt, re.I)
            continue
        if t and not re.match(r"^late\b", low):
            items.append(("title", seg, (t.group("rank").lower(), t.group("place"))))
            continue
        if re.match(r"^late\b", low):
            plist.drops.append(Drop(line_no, seg, "a 'late' title: someone dead, not an entry"))
            continue
        r = _RANK_ONLY.match(seg.strip().rstrip("."))
        if r:
            items.append(("rank", seg, r.group("rank").lower()))
            continue
        items.append(("other", seg, None))
    return items, aliases


def _resolve_items(plist, resolver, e: _Entry, heads: list[int], mutual: dict) -> None:
    """Turn an entry's items into relations (see ``_read_description`` for appositions).  A clause whose
    apposition contradicts the list is retracted as a wrong referent: a title its resolved target does not
    hold, a "late" title, or "son to X" when the target is already the son of someone else.  A bare name right
    after a clause extends its targets ("mother to King Edward IV, Clarence, and Gloster")."""
    last = None                                            # (segment, relations it added, clause)

    def retract(seg):
        for rel in last[1]:
            if rel in plist.relations:
                plist.relations.remove(rel)
        plist.drops.append(Drop(e.line_no, e.text, f"'{last[0]}' names someone described as '{seg}', "
                                                   f"which the list's person is not"))
        return (last[0], [], last[2])

    for kind, seg, what in e.items:
        if kind == "owner":
            rel, owner = what
            plist.relations.extend((h, rel, owner) for h in heads)
            continue
        if kind == "apposition":
            tails = {t for (_, _, t) in last[1]} if last is not None else set()
            if what is not None and what[0] == "kin" and tails:
                # "widow to Edward, Prince of Wales, son to King Henry VI": is the list's Edward that son?
                c = what[1]
                parent = resolver(c.targets[0], e.first)[0] if c.targets else None
                parents = {t2 for h, r, t2 in plist.relations if r in ("son_of", "daughter_of") and h in tails}
                if parents and parent not in parents:
                    last = retract(seg)
                    continue
            elif what is not None and what[0] != "kin" and tails:
                rank, place, late = what
                holds = any(i in tails and r == f"{rank}_of" and _norm(p) == _norm(_place_name(place))
                            for i, r, p in plist.titles)
                if late or not holds:
                    last = retract(seg)
                continue
            plist.drops.append(Drop(e.line_no, seg, "apposition of a name in the description"))
            continue
        if kind == "other" and last is not None:
            hits = resolver.index.get(_norm(re.sub(r"^and\s+", "", seg, flags=re.I)), [])
            if hits and len({i for i, _ in hits}) == 1 and min(pr for _, pr in hits) <= 2:
                plist.relations.extend((h, last[2].relation, hits[0][0]) for h in heads)
                continue
        if kind != "clause":
            last = None
            continue
        c: _Clause = what
        if not c.targets and c.pronoun:
            if len(heads) == 2 and not c.plural:
                # "SIR HUMPHREY STAFFORD, and WILLIAM STAFFORD, his brother": the second is the first's
                rel = (heads[1], c.relation, heads[0])
                plist.relations.append(rel)
                last = (seg, [rel], c)
                continue
            ref = _pronoun_referent(plist.persons, [c], e.first)
            last = (seg, _apply(plist, resolver, heads, c, ref, e.line_no, e.text), c)
            continue
        if not c.targets:
            if c.plural and c.relation in ("brother_of", "sister_of"):                # "Twin brothers"
                mutual.setdefault(f"{c.relation}|{plist.persons[e.first].description}", []).extend(heads)
            last = None
            continue
        last = (seg, _apply(plist, resolver, heads, c, None, e.line_no, e.text), c)


def _add_title(plist: PersonsList, i: int, rank: str, place: str) -> None:
    rank = _RANK_ALIASES.get(rank.lower(), rank.lower())
    plist.titles.append((i, f"{rank}_of", _place_name(place)))
    plist.ranks.append((i, rank, _place_name(place)))


def _share_column_descriptions(plist: PersonsList, entries: list[_Entry], rows: list[_Row]) -> None:
    """Timon's list sets a plural description beside the middle of a column of names ("FLAMINIUS / LUCILIUS
    Servants to Timon. / SERVILIUS"): a bare name one or two lines from such a line, and nearer to it than to
    any other, takes its relation clauses."""
    by_line = {e.line_no: e for e in entries}
    plural = {}
    for r in rows:
        e = by_line.get(r.line_no)
        if e is None or not r.column:
            continue
        d = plist.persons[e.first].description
        if d and _plural_word(d.split()[0].lower()):
            plural[r.line_no] = e
    if not plural:
        return
    for e in entries:
        p = plist.persons[e.first]
        if p.description or e.count != 1 or e.line_no in plural:
            continue
        near = sorted((abs(e.line_no - ln), ln) for ln in plural if abs(e.line_no - ln) <= 2)
        if near and (len(near) == 1 or near[0][0] < near[1][0]):
            src = plural[near[0][1]]
            p.description = plist.persons[src.first].description
            e.items = [it for it in src.items if it[0] == "clause"]


def _name_ids(persons: list[Person]) -> None:
    """``id_name``: the name, or for names two entries share, the name and its first description segment."""
    seen: dict[str, int] = {}
    for p in persons:
        seen[p.name] = seen.get(p.name, 0) + 1
    for p in persons:
        segs = _segments(p.description)
        first = _title_case(segs[0][0].rstrip(".")) if segs and _is_caps(segs[0][0].split()[0]) else \
            (segs[0][0].rstrip(".") if segs else "")
        p.id_name = p.name if seen[p.name] == 1 else f"{p.name} ({first or 'line ' + str(p.line_no + 1)})"
    ids = [p.id_name for p in persons]
    for p in persons:
        if ids.count(p.id_name) > 1:
            p.id_name = f"{p.name} (line {p.line_no + 1})"


def _place_name(place: str) -> str:
    out = " ".join(_title_case(w) if _is_caps(w) else w for w in place.split())
    return "Gloucester" if out.lower() == "gloster" else out


def _clean_name(name: str) -> str:
    name = re.sub(r"\(.*?\)", "", name).strip().strip(".,}").strip()
    name = re.sub(r"^(?:a|an)\s+", "", name, flags=re.I)
    name = re.sub(r"^person\s+representing\s+", "", name, flags=re.I)      # "A person representing HYMEN"
    return " ".join(name.split())


def _is_header(etext: str, nxt: str, stats: _WordStats) -> bool:
    """A group line that heads the bare names below it ("Suitors to Bianca", "His sons:", "Sons to the king"):
    it ends in a colon, or it states a relation, has no comma, and the next entry is a person with no
    relational description ("Goths and Romans.", "Ambassadors to the King of England." are groups)."""
    if etext.rstrip().endswith(":"):
        return True
    if not nxt or _is_group(nxt, stats) or "," in etext or re.match(r"^(?:two|three|four|several|other)\b", etext,
                                                                   re.I) or _clause(etext) is None:
        return False
    names, desc, _ = _split_name(nxt)
    return not any(_clause(s) for s, _ in _segments(desc))


def _in_header_scope(raw_name: str, desc: str) -> bool:
    """A header applies to the entries below it until one has a relational description, starts with an article
    or a role noun ("WIDOW", "PEDANT", "A YOUNG SON OF CLARENCE"), or with a peer's rank other than Prince."""
    first = raw_name.split()[0].lower() if raw_name.split() else ""
    if any(_clause(s) for s, _ in _segments(desc)):
        return False
    if first in {"a", "an", "the", "another"} or first in ROLE_NOUNS or first in {"widow", "pedant", "hostess"}:
        return False
    return first not in HONORIFICS - {"prince", "princess"}


def _pronoun_referent(persons: list[Person], clauses, before: int) -> int | None:
    """The nearest entry above ``before`` not itself described by a pronoun ("MALCOLM, his Son. / DONALBAIN,
    his Son." are both Duncan's) and whose gender does not contradict the pronoun; None at the top."""
    pron = next((c.pronoun for c in clauses if isinstance(c, _Clause) and c.pronoun), "his")
    for i in range(before - 1, -1, -1):
        p = persons[i]
        if p.pronoun_described:
            continue
        if pron == "her" and p.gender == "m" or pron == "his" and p.gender == "f":
            continue
        return i
    return None


class _ListResolver:
    """Resolves a target phrase of a persons list ("Polonius", "the King", "the former", "Juliet's Nurse")
    to a person index, or (None, why)."""

    def __init__(self, plist: PersonsList, stats: _WordStats | None = None):
        self.plist = plist
        self.index = _alias_index(plist, stats)

    def __call__(self, target: str, entry: int) -> tuple[int | None, str]:
        t = target.strip().strip(".").strip()
        if t.lower() in ("the former", "former"):
            return (entry - 1, "") if entry > 0 else (None, "'the former' at the top of the list")
        m = re.match(r"^(.+?)'s?\s+([\w-]+)$", t)
        if m and not re.search(r"\bof\b", t):
            hits = {i for i, _ in self.index.get(_norm(m.group(2)), [])}
            if len(hits) == 1:
                return hits.pop(), ""
            return None, f"possessive '{t}' names no single entry"
        core = re.sub(r"^(?:the\s+)?(?:present\s+|banished\s+|old\s+)?", "", t, flags=re.I).strip()
        key = _norm(re.sub(r"^the\s+", "", core, flags=re.I))
        if re.match(r"^(?:two|three|both)\b", key):
            return None, f"plural target '{t}'"
        if key in RANK_WORDS:
            i = _rank_holder(self.plist, key)
            return (i, "") if i is not None else (None, f"no holder of the rank '{key}'")
        hits = self.index.get(key)
        if not hits and " " not in key and len(key) >= 6:      # one letter off: "Aegion" for Aegeon
            fuzzy = {i for k, v in self.index.items() if " " not in k and _edit1(key, k) for i, _ in v}
            if len(fuzzy) == 1:
                hits = [(fuzzy.pop(), 1)]
        if not hits:
            return None, f"'{t}' is not in the list"
        best = min(pr for _, pr in hits)
        cands = sorted({i for i, pr in hits if pr == best} - {entry})
        if not cands:
            return None, f"'{t}' names the entry itself"
        return cands[0], ""


def _apply(plist, resolver, heads, clause: _Clause, ref, line_no, etext) -> list[tuple[int, str, int]]:
    """Resolve a clause's targets and add its relations for every head; returns the relations added."""
    added = []
    if clause.pronoun and not clause.targets:
        if ref is None:
            plist.drops.append(Drop(line_no, etext, f"'{clause.pronoun} ...': no entry above to refer to"))
            return added
        tails = [ref]
    else:
        tails = []
        for t in clause.targets:
            if t.lower() in ("her", "him"):
                r = _pronoun_referent(plist.persons, [_Clause("", [], "her" if t.lower() == "her" else "his")],
                                      heads[0])
                if r is None:
                    plist.drops.append(Drop(line_no, etext, f"'{t}': no entry above to refer to"))
                else:
                    tails.append(r)
                continue
            if t.lower().startswith("the former") and re.search(r"\bpresent\b", etext, re.I):
                plist.drops.append(Drop(line_no, etext, "'the former' (the former king: not an entry)"))
                continue
            i, why = resolver(t, heads[0])
            if i is None:
                plist.drops.append(Drop(line_no, etext, why))
            else:
                tails.append(i)
    for h in heads:
        for t in tails:
            if h == t:
                continue
            rel = clause.relation
            if rel == "married_to":
                g = plist.persons[h].gender
                rel = "wife_of" if g == "f" else "husband_of" if g == "m" else None
                if rel is None:
                    plist.drops.append(Drop(line_no, etext, "'married to': the entry's gender is unknown"))
                    continue
            triple = (t, rel, h) if clause.inverse else (h, rel, t)
            plist.relations.append(triple)
            added.append(triple)
    return added


def _rank_holder(plist: PersonsList, rank: str) -> int | None:
    """The play's holder of ``rank``: the single holder; else the first whose name starts with the rank
    ("KING HENRY V." before "CHARLES VI, king of France"); else the first listed (lists run by rank)."""
    holders = sorted({i for i, r, _ in plist.ranks if r == rank})
    if not holders:
        return None
    if len(holders) == 1:
        return holders[0]
    named = [i for i in holders if plist.persons[i].name.lower().split()[0] == rank
             and " of " not in plist.persons[i].name.lower()]
    return (named or holders)[0]


def _alias_forms(p: Person, common=None) -> list[tuple[str, int]]:
    """(alias key, priority) of a person.  0: its full name (with and without an article) and the aliases
    the list gives; 1: shortened forms (honorific dropped, single name words, first + last word, "King Edward"
    for "King Edward the Fourth"); 3: a name after a female honorific ("Lady Northumberland" ->
    "northumberland"), which yields to a peer's place (priority 2, added by ``_alias_index``).  Words after
    "of" are places, not names ("Antipholus of Ephesus" gives "antipholus", not "ephesus").  A name made only of
    common words (``common(word)``: "Roman Herald", "Sea Captain") gives only its last word ("herald"), so
    "ROMAN." stays a role."""
    out = []
    for n_alias, name in enumerate([p.name] + p.aliases):
        more = 1 if n_alias else 0              # a given alias ("afterwards King Edward V") yields to names
        key = _norm(re.split(r"\s+(?:that|who)\s+", name, flags=re.I)[0])   # "Son That Has Killed ..." -> "son"
        out.append((key, more))
        ws = key.split()
        while ws and ws[0] in {"a", "an", "the", "another"}:
            ws = ws[1:]
        if ws and " ".join(ws) != key:
            out.append((" ".join(ws), 0))
        head = " ".join(ws).split(" of ")[0].split() if " of " in " ".join(ws) else ws
        core = [w for w in head if w not in HONORIFICS and w not in _SMALL and w not in _ADJECTIVES
                and w not in _ROMAN_NUMERALS and not re.fullmatch(r"[a-z]\.?", w)]
        if len(core) > 1 and common is not None and all(w in ROLE_NOUNS or common(w) for w in core):
            core = core[-1:]
        if head and head[0] in HONORIFICS and len(head) > 1:
            female = head[0] in ("lady", "mistress", "dame", "duchess", "countess", "queen", "princess")
            out.append((" ".join(head[1:]), 3 if female else 1 + more))
            for w in core:
                out.append((w, 3 if female else 1 + more))
        else:
            for w in core:
                out.append((w, 1 + more))
        if len(core) >= 2:
            out.append((f"{core[0]} {core[-1]}", 1 + more))
            for a in range(len(core) - 1):                 # "ague cheek" of "Sir Andrew Ague-Cheek"
                out.append((f"{core[a]} {core[a + 1]}", 1 + more))
        m = re.match(r"^(.*?)\s+the\s+(\w+)$", key)        # "king edward the fourth" -> "king edward iv"
        if m and m.group(2) in _ROMAN:
            out.append((f"{m.group(1)} {_ROMAN[m.group(2)].lower()}", more))
            out.append((m.group(1), 1 + more))
        m = re.match(r"^((?:king|queen|prince)\s+\w+)\s+[ivx]+$", key)
        if m:
            out.append((m.group(1), 1 + more))
        if head and not core:                              # "Nurse", "Duke", "Old Man": a role name
            out.append((head[-1], 1))
        if " of " in key and not _TITLE.match(name):     # "John of Gaunt" -> "gaunt": called by the place
            out.append((key.split(" of ")[-1], 3))
    for seg, _ in _segments(p.description):                 # "Hostess in Eastcheap", "an Abbess at Ephesus"
        m = re.match(r"^(?:an?\s+)?(?:old\s+|rich\s+)?([A-Za-z]+)(?:\s+(?:in|of|at)\b.*)?$", seg.strip().rstrip("."))
        if m:
            w = m.group(1).lower()
            if len(w) >= 4 and w not in ROLE_NOUNS and w not in ROLE_RELATIONS and not _plural_word(w) \
                    and w not in HONORIFICS - {"abbess"} and w not in _SMALL:
                out.append((w, 3))
    for key, pr in list(out):
        ws = key.split()
        if any(w in SPELLING_VARIANTS for w in ws):
            out.append((" ".join(SPELLING_VARIANTS.get(w, w) for w in ws), pr))
    return out


def _alias_index(plist: PersonsList, stats: _WordStats | None = None) -> dict[str, list[tuple[int, int]]]:
    """alias key -> [(person index, priority)]: ``_alias_forms`` of every person, and titles: "duke of york"
    (0), a peer's place "york" (2: peers are called by it), a duchess's or countess's place (3), a king's or
    prince's country (4: "France." in Lear, after everything else)."""
    index: dict[str, list[tuple[int, int]]] = {}

    def add(key, i, pr):
        if key and (i, pr) not in index.setdefault(key, []):
            index[key].append((i, pr))

    for i, p in enumerate(plist.persons):
        for key, pr in _alias_forms(p, stats.common if stats is not None else None):
            add(key, i, pr)
    for i, rel, place in plist.titles:
        rank = rel[:-3]
        add(_norm(f"{rank} of {place}"), i, 0)
        pr = 2 if rank in _PEER_RANKS and rank not in _CLERGY else 3 if rank in ("duchess", "countess") + _CLERGY \
            else 4
        for key in dict.fromkeys([_norm(place), SPELLING_VARIANTS.get(_norm(place), _norm(place))]):
            add(key, i, pr)
    for key in list(index):                               # "duke of gloster" as well as "duke of gloucester"
        ws = key.split()
        if any(w in SPELLING_VARIANTS for w in ws):
            for i, pr in list(index[key]):
                add(" ".join(SPELLING_VARIANTS.get(w, w) for w in ws), i, pr)
    return index


# ---- speeches --------------------------------------------------------------------------------------------
@dataclass
class Speech:
    """One speech: its heading as printed, the heading's line index (into ``text.split("\\n")``), the scene (a
    counter that every ACT / SCENE / PROLOGUE ... heading advances), the entity ids it resolved to (several for
    a joint heading), and the kind: "character", "role", "joint", "group" (ALL., BOTH., CITIZENS.: no id),
    "unresolved" or "section" (SONG and the like).  ``note`` says why a heading is unresolved, or, starting
    with "ambiguous", which tie-break chose among several persons."""
    heading: str
    line_no: int
    scene: int
    ids: tuple[str, ...]
    kind: str
    note: str = ""


@dataclass
class Play:
    """A parsed play: its persons list, its speeches, its roles, and the alias table ``resolve_heading`` and
    ``link_mentions`` use."""
    title: str
    genre: str
    text: str
    persons: PersonsList
    speeches: list[Speech] = field(default_factory=list)
    roles: dict[str, str] = field(default_factory=dict)          # role name -> entity id
    group_nouns: set[str] = field(default_factory=set)
    alias_index: dict = field(default_factory=dict)
    stats: _WordStats | None = None
    exclude: dict = field(default_factory=dict)                   # heading form -> persons it cannot name
    _ambiguous_cands: list = field(default_factory=list, repr=False)
    _not_these: frozenset = field(default_factory=frozenset, repr=False)
    _index: dict = field(default_factory=dict, repr=False)      # entity id -> person index

    def person_id(self, i: int) -> str:
        """The entity id of person ``i`` of the list."""
        return character_id(self.title, self.persons.persons[i].id_name)

    def _index_of(self, ent: str) -> int:
        return self._index.get(ent, -1)

    @property
    def character_ids(self) -> list[str]:
        return [self.person_id(i) for i in range(len(self.persons.persons))]

    # -- headings ----------------------------------------------------------------------------------------
    def resolve_heading(self, heading: str, context: set[int] | None = None,
                        not_these: set[int] | frozenset = frozenset()) -> tuple[str, tuple[str, ...], str]:
        """(kind, entity ids, note) for one speech heading (see the module docstring for the order of rules).
        ``context``: person indices on stage in the scene; ``not_these``: persons the heading cannot name
        there (they speak under another heading in the scene); both only break ties between candidates."""
        self._not_these = not_these
        key = _heading_key(heading)
        if not key or key.lower() in _SECTIONS or key.lower() in _ROMAN_NUMERALS:
            return "none", (), "not a speaker"
        parts = _joint_parts(key)
        if len(parts) > 1:
            got = [self._resolve_one(p, context) for p in parts]
            if all(k in ("character", "role") for k, _, _ in got):
                return "joint", tuple(i for _, ids, _ in got for i in ids), ""
            if any(k == "group" for k, _, _ in got):
                return "group", (), "a joint heading with a group"
            return "unresolved", (), "; ".join(n for k, _, n in got if k == "unresolved")
        return self._resolve_one(key, context)

    def _resolve_one(self, key: str, context) -> tuple[str, tuple[str, ...], str]:
        toks = _norm(key).split()
        while len(toks) > 1 and toks[0] in ("a", "an", "the"):
            toks = toks[1:]
        if not toks:
            return "none", (), "empty heading"
        if len(toks) > 2 and toks[0] == "ghost" and toks[1] == "of":     # "GHOST OF RIVERS.": Rivers himself
            i, why = self._match(toks[2:], context)
            if i is not None:
                return "character", (self.person_id(i),), why
        if toks[0] in _ORDINALS and len(toks) > 1:
            return self._role(_ORDINALS[toks[0]], toks[1:])
        if toks[0] in _GROUP_HEADS or (len(toks) <= 3 and toks[-1] in ROLE_NOUNS and _plural_word(toks[-1])) \
                or (toks[-1] in self.group_nouns and _plural_word(toks[-1])):
            return "group", (), ""
        i, why = self._match(toks, context)
        if i is not None:
            return "character", (self.person_id(i),), why
        role = self._role("", toks)
        if role[0] == "role":
            return role
        return "unresolved", (), why

    def _match(self, toks: list[str], context) -> tuple[int | None, str]:
        """The person a heading's words name, and a note ("" when only one person fits; "ambiguous ..." with
        the tie-break used otherwise; the reason when none does)."""
        index = self.alias_index
        key = " ".join(toks)
        cands = index.get(key)
        rank = None
        if not cands and len(toks) == 2 and toks[0] in _PLACE_ADJECTIVES and toks[1] in RANK_WORDS:
            cands = index.get(f"{toks[1]} of {_PLACE_ADJECTIVES[toks[0]].lower()}")      # "FRENCH KING."
        if not cands and len(toks) == 1 and toks[0] in RANK_WORDS:                       # "KING.", "DUCHESS."
            rank = toks[0]
            cands = [(i, 1) for i in sorted({i for i, r, _ in self.persons.ranks if r == rank})]
        if not cands:
            cands = self._abbreviation(toks)
        if not cands and len(toks) > 1 and toks[0] in HONORIFICS:                        # "QUEEN MARGARET."
            cands = index.get(" ".join(toks[1:])) or self._abbreviation(toks[1:])
            if not cands and toks[0] in RANK_WORDS:        # "DUKE SENIOR.": the person named just "Duke"
                cands = [(i, 1) for i, p in enumerate(self.persons.persons) if _norm(p.name) == toks[0]]
        if not cands:
            variants = [SPELLING_VARIANTS.get(t, t) for t in toks]
            if variants != toks:
                cands = index.get(" ".join(variants)) or self._abbreviation(variants)
        if not cands and len(toks) == 1 and len(toks[0]) >= 5:                            # "PERACLES."
            fz = {i for k in index if " " not in k and _edit1(toks[0], k) for i, _ in index[k]}
            if len(fz) == 1:
                return fz.pop(), ""
        if not cands:
            return None, f"'{key}' matches no person"
        best = min(pr for _, pr in cands)
        if len(toks) == 1 and toks[0] in ROLE_NOUNS and best >= 3:
            return None, f"'{key}' is a role noun that only a place or a description matches"   # "GOTH."
        top = sorted({i for i, pr in cands if pr == best})
        if len(top) == 1:
            return top[0], ""
        self._ambiguous_cands = [(i, best) for i in top]
        kept = [i for i in top if i not in self.exclude.get(key, ()) and i not in self._not_these] or top
        if len(kept) == 1:
            return kept[0], "ambiguous: the others speak under another heading in the same scenes"
        if context:
            inside = [i for i in kept if i in context]
            if len(inside) == 1:
                return inside[0], "ambiguous: the one on stage in this scene"
            near = [i for i in kept if self._partners(i) & context]
            if len(near) == 1:
                return near[0], "ambiguous: the one whose relation or title place is on stage"
        if rank is not None:
            named = [i for i in kept if _norm(self.persons.persons[i].name).split()[0] == rank
                     and " of " not in self.persons.persons[i].name]
            if named:
                return named[0], f"ambiguous {[self.persons.persons[i].name for i in kept]}: named by the rank"
        return kept[0], f"ambiguous {[self.persons.persons[i].name for i in kept]}: first listed"

    def _partners(self, i: int) -> set[int]:
        """Persons related to person ``i`` in the list, or holding a title of the same place."""
        out = {t for h, _, t in self.persons.relations if h == i} | {h for h, _, t in self.persons.relations
                                                                     if t == i}
        places = {pl for j, _, pl in self.persons.titles if j == i}
        return out | {j for j, _, pl in self.persons.titles if pl in places and j != i}

    def candidates(self, heading: str) -> list[int]:
        """The persons a one-part heading could name, before any tie-break (for ``_paragraph_speeches``)."""
        toks = _norm(_heading_key(heading)).split()
        saved, self.exclude = self.exclude, {}
        try:
            i, note = self._match(toks, None)
        finally:
            self.exclude = saved
        if i is None or not note.startswith("ambiguous ["):
            return [] if i is None else [i]
        return [j for j, _ in (self._ambiguous_cands or [])] or [i]

    def _abbreviation(self, toks: list[str]) -> list[tuple[int, int]]:
        """Persons whose alias words start with the heading's words, in order ("lady p" -> "lady percy")."""
        out = []
        if len(toks[0].strip(".")) < 2 and len(toks) == 1:      # "M. JOURDAIN" may start with an initial
            return out
        for key, hits in self.alias_index.items():
            ws = key.split()
            if len(ws) < len(toks) or not ws[0].startswith(toks[0].strip(".")):
                continue
            j = 1
            ok = True
            for t in toks[1:]:
                t = t.strip(".")
                while j < len(ws) and not ws[j].startswith(t):
                    j += 1
                if j == len(ws):
                    ok = False
                    break
                j += 1
            if ok:
                out += [(i, pr + (0 if ws == toks else 1)) for i, pr in hits]
        return out

    def _role(self, ordinal: str, toks: list[str]) -> tuple[str, tuple[str, ...], str]:
        """A role entity for an anonymous speaker: every word a role noun (or its abbreviation, "Mess." ->
        Messenger, "P. King" -> Player King when the play's groups have Players), possibly after adjectives
        (Old, French, Serving) or an owner ("VARRO'S SERVANT"); an ordinal makes it "First ..."."""
        words = []
        nouns = set(ROLE_NOUNS) | self.group_nouns
        adjectives = {"old", "young", "french", "english", "roman", "tyrian", "volscian", "other", "another",
                      "chief", "lord", "serving", "gentleman"}
        for k, t in enumerate(toks):
            t = t.strip(".")
            last = k == len(toks) - 1
            if t in adjectives and not last:
                words.append(t)
                continue
            if re.fullmatch(r"[a-z]+'s?", t) and t.endswith(("'s", "'")) and not last:   # "varro's servant"
                words.append(t[:1].upper() + t[1:])
                continue
            if t in nouns or (words and t in RANK_WORDS):
                if ordinal and _plural_word(t) and _singular(t) in nouns:     # "FIRST AND SECOND LORDS"
                    t = _singular(t)
                words.append(t)
                continue
            # an abbreviation: the play's own group nouns first ("P." -> Player in Hamlet, whose list has
            # "Players."), a single letter only from them; the shortest, then the first alphabetically
            own = sorted({n for n in self.group_nouns if n.startswith(t) and not _plural_word(n)
                          and (len(t) >= 3 or not last)}, key=lambda n: (len(n), n))
            full = own or sorted({n for n in ROLE_NOUNS if n.startswith(t) and not _plural_word(n)
                                  and len(t) >= 3}, key=lambda n: (len(n), n))
            if full:
                words.append(full[0])
                continue
            if ordinal and t.isalpha() and len(t) >= 3:          # "2 Capulet": a numbered speaker all the same
                words.append(t)
                continue
            return "unresolved", (), f"'{' '.join(toks)}' matches no person or role"
        name = " ".join(([ordinal] if ordinal else []) + [w if w[:1].isupper() else w[:1].upper() + w[1:]
                                                          for w in words])
        ent = character_id(self.title, name)
        if any(p.id_name == name for p in self.persons.persons):
            ent = character_id(self.title, name + " (role)")
        self.roles[name] = ent
        return "role", (ent,), ""


def _plural_word(w: str) -> bool:
    return (w.endswith("s") and not w.endswith(("ss", "us"))) or w.endswith(("men", "ren", "banditti"))


def _heading_key(heading: str) -> str:
    h = heading.strip().strip("[]").strip()
    h = re.sub(r"[.\-:,\]]+$", "", h).strip()
    return " ".join(h.split())


def _joint_parts(key: str) -> list[str]:
    """"Mar. and Ber." -> [Mar, Ber]; "GREY, SCROOP" -> [GREY, SCROOP]; "FIRST and SECOND SERVANT" ->
    [FIRST SERVANT, SECOND SERVANT]."""
    parts = [p.strip(" .") for p in re.split(r"\s+(?:and|AND|&)\s+|\s*,\s*|(?<=[A-Za-z]{4})\.\s+(?!and\b|AND\b)"
                                             r"(?=[A-Za-z]{3})", key) if p.strip(" .")]
    if len(parts) > 1:
        last = parts[-1].split()
        for k, p in enumerate(parts[:-1]):
            if p.lower() in _ORDINALS and len(last) > 1:
                parts[k] = p + " " + " ".join(last[1:])
    return parts


def _raw_speeches(play: Play, first_line: int) -> tuple[list[tuple[str, int, int]], dict[int, list[str]]]:
    """(heading, line index, scene) of every speech heading from ``first_line``, and each scene's stage
    directions (see ``parse_play`` for what counts as a heading and as a scene)."""
    lines = play.text.split("\n")
    raw, directions = [], {}
    scene, n, i, started = 0, len(lines), first_line, False
    while i < n:
        if not lines[i].strip():
            i += 1
            continue
        j = i
        while j < n and lines[j].strip():
            j += 1
        para = lines[i:j]
        first = para[0].strip()
        if is_scene_heading(first) or _heading_key(first).lower() in _SECTIONS:
            scene += 1
            started = True
        elif started:
            for k, line in enumerate(para):
                s = line.strip()
                if "[" in s:
                    directions.setdefault(scene, []).append(s)
                if (k + 1 < len(para) and is_speaker_heading(s) and not is_scene_heading(s)
                        and (k == 0 or para[k - 1].strip().endswith("]"))):
                    raw.append((s, i + k, scene))
        i = j
    return raw, directions


def _paragraph_speeches(play: Play, first_line: int) -> None:
    """Fill ``play.speeches``.  Headings are resolved twice: first alone; then a heading that could name several
    persons ("BRUTUS.": Marcus or Decius) drops a candidate who speaks under another, unambiguous heading in
    the same scene (or was resolved so under it earlier in the scene), or anywhere in answer to this one, or in
    two scenes that also use this one ("DECIUS."); then prefers the candidate a stage direction of the scene
    names or who already spoke in it, or one whose list relation or title place is shared by someone there (the
    Duchess of York enters with York; John Talbot speaks after his father); else, for a rank alone
    ("PRINCE."), the one the rank names; else the first listed.  Fails when these signs point nowhere ("CINNA."
    in Julius Caesar III.3 is the poet, but the conspirator is listed first)."""
    raw, directions = _raw_speeches(play, first_line)
    alone = {h: play.resolve_heading(h) for h in dict.fromkeys(h for h, _, _ in raw)}   # in order of use
    first = [alone[h] for h, _, _ in raw]
    owner: dict[str, int] = {}                             # unambiguous heading form -> person
    scenes_of: dict[str, set[int]] = {}
    on_stage: dict[int, set[int]] = {}
    adjacent: set[tuple[str, str]] = set()                 # forms that answer each other: two persons
    prev = None
    for (h, _, sc), (kind, ids, note) in zip(raw, first):
        form = _norm(_heading_key(h))
        scenes_of.setdefault(form, set()).add(sc)
        if prev is not None and prev[1] == sc and prev[0] != form:
            adjacent |= {(prev[0], form), (form, prev[0])}
        prev = (form, sc)
        if kind == "character" and not note.startswith("ambiguous"):
            owner[form] = play._index_of(ids[0])
            on_stage.setdefault(sc, set()).add(owner[form])
    speaking: dict[int, dict[str, int]] = {}               # scene -> {unambiguous form: person}
    for sc, persons in on_stage.items():
        speaking[sc] = {f: o for f, o in owner.items() if sc in scenes_of[f]}
    on_stage = {}
    for sc, texts in directions.items():
        for t in texts:
            on_stage.setdefault(sc, set()).update(_entering(play, t))
    play.exclude = {}
    for (h, _, _), (kind, _, note) in zip(raw, first):
        form = _norm(_heading_key(h))
        if kind != "character" or not note.startswith("ambiguous") or form in play.exclude:
            continue
        cands = play.candidates(h)
        play.exclude[form] = {c for c in cands for g, o in owner.items()
                              if o == c and g != form and ((g, form) in adjacent
                                                           or len(scenes_of[g] & scenes_of[form]) >= 2)}
    seen: dict[int, dict[str, int]] = {}                   # scene -> {form: person} as resolved so far
    for (h, line_no, sc), (kind, ids, note) in zip(raw, first):
        form = _norm(_heading_key(h))
        if kind == "character" and note.startswith("ambiguous"):
            here = {o for f, o in speaking.get(sc, {}).items() if f != form}
            before = {o for f, o in seen.get(sc, {}).items() if f != form}
            kind, ids, note = play.resolve_heading(h, on_stage.get(sc, set()) | here | before, here | before)
        if kind == "character":
            seen.setdefault(sc, {})[form] = play._index_of(ids[0])
        play.speeches.append(Speech(h, line_no, sc, ids, kind if kind != "none" else "section", note))


def _entering(play: Play, direction: str) -> set[int]:
    """Person indices a stage direction names by an alias that only one person has ("[Enter the DUCHESS OF
    YORK.]", "[Enter DECIUS.]")."""
    out = set()
    text = " " + _norm(direction) + " "
    for key, hits in play.alias_index.items():
        people = {i for i, pr in hits if pr <= 2}
        if len(people) == 1 and len({i for i, _ in hits}) == 1 and f" {key} " in text:
            out |= people
    return out


def parse_play(title: str, genre: str, text: str) -> Play:
    """Parse one play: persons list, alias table, then its speeches.

    Speeches start at the first ACT / SCENE / PROLOGUE / INDUCTION heading after the persons list.  A speech
    heading is a line ``pairs.is_speaker_heading`` accepts that starts a paragraph (or follows a line of stage
    direction) and has more text under it in the same paragraph (so a lone "Westminster Abbey." under a scene
    heading is not a speaker).  Every ACT / SCENE heading and every PROLOGUE / EPILOGUE / INDUCTION / SONG
    paragraph starts a new scene.
    """
    first, end = find_persons_list(text, title)
    stats = _WordStats("\n".join(text.split("\n")[end:]))
    persons = parse_persons_list(text, title, stats)
    play = Play(title, genre, text, persons)
    play.stats = stats
    play.alias_index = _alias_index(persons, play.stats)
    for g in persons.groups:                               # "Carriers", "a Soothsayer": nouns a heading may use
        for w in _words(g):
            lw = w.lower()
            if lw not in _SMALL and lw not in _COUNT_WORDS and (play.stats.plural_noun(w) or play.stats.common(w)):
                play.group_nouns.add(lw)
                if _plural_word(lw):
                    play.group_nouns.add(_singular(lw))
    play._index = {play.person_id(i): i for i in range(len(persons.persons))}
    _paragraph_speeches(play, persons.span[1] + 1)
    return play


def _singular(w: str) -> str:
    if w.endswith("men"):
        return w[:-3] + "man"
    if w.endswith("ies"):
        return w[:-3] + "y"
    if w.endswith(("ches", "shes", "sses")):
        return w[:-2]
    return w[:-1] if w.endswith("s") else w


def parse_plays(works) -> list[Play]:
    """``parse_play`` for every play among ``works`` (Work objects; poems, which have no persons list, skipped)."""
    out = []
    for w in works:
        if w.genre == "poetry":
            continue
        out.append(parse_play(w.title, w.genre, w.text))
    return out


# ---- entity linking ---------------------------------------------------------------------------------------
_HONORIFIC_PREFIX = {"lord", "lady", "sir", "king", "queen", "prince", "princess", "duke", "duchess", "count",
                     "countess", "earl", "friar", "master", "mistress", "signior", "don", "cardinal"}


def _heading_owners(play: Play) -> dict[str, str]:
    """Heading form (a whole word: "brutus", "york") -> the entity its speeches resolved to, where one entity
    has at least 80% of them: the name the play itself uses for that person."""
    votes: dict[str, Counter] = {}
    for sp in play.speeches:
        if sp.kind == "character":
            votes.setdefault(_norm(_heading_key(sp.heading)), Counter())[sp.ids[0]] += 1
    out = {}
    for form, c in votes.items():
        ent, n = c.most_common(1)[0]
        if n >= 0.8 * sum(c.values()):
            out[form] = ent
    return out


def _linking_table(play: Play) -> dict[tuple[str, ...], tuple[str | None, bool]]:
    """words -> (entity id or None when ambiguous, is a common word).

    Aliases of priority 0-3 (names, name words, peers' places, "Anne" of "Mistress Anne Page", "Hostess" of
    "Hostess in Eastcheap"; not a king's country).  A word several persons share links to the
    one the play's speech heading of that word names ("Brutus": the speeches headed "BRUTUS." are Marcus
    Brutus's), else to nobody.  A title's place ("Kent", "Gloster", "Ephesus") links only to a person named by
    the title ("Earl of Kent") or whose speeches are headed by it ("GLOSTER." in Richard III): otherwise it is
    more often the place.  A rank word ("King") links only where the play has a single holder of the rank.
    """
    owners = _heading_owners(play)
    places = {_norm(pl) for _, _, pl in play.persons.titles}
    places |= {SPELLING_VARIANTS.get(pl, pl) for pl in places}
    table: dict[tuple[str, ...], set] = {}
    for key, hits in play.alias_index.items():
        if all(pr > 3 for _, pr in hits):               # a king's country ("France") is a place
            continue
        ws = tuple(key.split())
        if len(ws) == 1 and ws[0] in RANK_WORDS:
            continue
        best = min(pr for _, pr in hits)
        ids = {i for i, pr in hits if pr == best}
        if key in places and best >= 2:
            ids = {i for i in ids if _norm(play.persons.persons[i].name).endswith(f" of {key}")
                   or owners.get(key) == play.person_id(i)}
            if not ids:
                continue
        if len(ids) > 1 and key in owners:
            ids = {i for i in ids if play.person_id(i) == owners[key]} or ids
        table.setdefault(ws, set()).update(ids)
    for rank in RANK_WORDS:
        holders = {i for i, r, _ in play.persons.ranks if r == rank}
        if len(holders) == 1:
            table[(rank,)] = holders
    out = {}
    for ws, ids in table.items():
        common = len(ws) == 1 and (play.stats.lower.get(ws[0], 0) > 0 or ws[0] in RANK_WORDS)
        out[ws] = (play.person_id(next(iter(ids))) if len(ids) == 1 else None, common)
    return out


def link_mentions(text: str, play: Play) -> list[tuple[int, int, str]]:
    """(start, end, entity id) of the persons of ``play`` named in ``text``, in order.

    * Speaker headings: a line that ``is_speaker_heading`` and resolves to one person or role links as a whole
      (span = the heading without its final full stop).
    * Running text: greedy longest match, over capitalised words, of the play's alias table (full names,
      "Duke of York", single name words, peers' places like "Kent", spelling variants).  A trailing "'s" is
      left outside the span.  A capitalised honorific just before a match ("Lord Hamlet", "Sir Toby",
      "Mistress Page") is taken into the span.
    * Skipped: an alias shared by two persons (ambiguous: "Antipholus", "Dromio"); an alias that is also a
      common word of the play (it occurs in lower case: "Page", "Ford", "Will", "Nurse", "King") when it
      starts a line or a sentence, where any word is capitalised; a rank word ("the King") unless the play
      has a single holder of that rank.  Fails on a name used for someone not in the list (the dead Duke of
      Gloucester in Richard II matches "Gloucester"), and on a place used as a place ("in Kent").
    """
    table = _linking_table(play)
    max_len = max((len(k) for k in table), default=1)
    out: list[tuple[int, int, str]] = []
    pos = 0
    for line in text.split("\n"):
        stripped = line.strip()
        if stripped and is_speaker_heading(stripped) and not is_scene_heading(stripped):
            kind, ids, _ = play.resolve_heading(stripped)
            if kind in ("character", "role"):
                start = pos + line.index(stripped)
                out.append((start, start + len(_heading_key(stripped)), ids[0]))
                pos += len(line) + 1
                continue
        out += [(pos + s, pos + e, ent) for s, e, ent in _link_line(line, table, max_len)]
        pos += len(line) + 1
    return out


def _link_line(line: str, table, max_len: int) -> list[tuple[int, int, str]]:
    words = [(m.start(), m.end(), m.group()) for m in _WORD.finditer(line)]
    out = []
    k = 0
    while k < len(words):
        s, e, w = words[k]
        if not w[:1].isupper():
            k += 1
            continue
        hit = None
        for n in range(min(max_len, len(words) - k), 0, -1):
            seq = [re.sub(r"'s$|'$", "", x[2]).lower() for x in words[k:k + n]]
            if not words[k + n - 1][2][:1].isupper():
                continue
            if any(" " in line[words[j][1]:words[j + 1][0]].strip() or
                   line[words[j][1]:words[j + 1][0]].strip() not in ("", "-")
                   for j in range(k, k + n - 1)):
                continue
            entry = table.get(tuple(seq))
            if entry is not None:
                hit = (n, entry)
                break
        if hit is None:
            k += 1
            continue
        n, (ent, common) = hit
        start, end = s, words[k + n - 1][1]
        last = words[k + n - 1][2]
        if last.endswith("'s"):
            end -= 2
        elif last.endswith("'"):
            end -= 1
        before = line[:start].rstrip()
        prev_word = words[k - 1][2] if k > 0 else ""
        honorific = (k > 0 and prev_word.lower() in _HONORIFIC_PREFIX and prev_word[:1].isupper()
                     and line[words[k - 1][1]:start].strip() == "")
        sentence_start = not before or before.endswith((".", "!", "?", ":", "--", "'", '"')) or \
            (honorific and (not line[:words[k - 1][0]].rstrip() or
                            line[:words[k - 1][0]].rstrip().endswith((".", "!", "?", ":"))))
        if ent is None or (common and n == 1 and sentence_start and not honorific):
            k += n
            continue
        if honorific:
            start = words[k - 1][0]
        out.append((start, end, ent))
        k += n
    return out


# ---- the graph --------------------------------------------------------------------------------------------
class KnowledgeGraph:
    """Entities, relations and (head, relation, tail) int64 triples with counts.

    ``entities[i]`` has type ``entity_types[i]``; ``triples`` is (N, 3) int64 of (head, relation, tail)
    indices into ``entities`` / ``relations`` / ``entities``; ``counts`` (N,) int64.  A TransE model takes
    ``triples`` as it is.
    """

    def __init__(self, entities, entity_types, relations, triples, counts):
        self.entities = list(entities)
        self.entity_types = list(entity_types)
        self.relations = list(relations)
        self.triples = np.asarray(triples, dtype=np.int64).reshape(-1, 3)          # (N, 3)
        self.counts = np.asarray(counts, dtype=np.int64).reshape(-1)                 # (N,)
        if len(self.entity_types) != len(self.entities):
            raise ValueError(f"{len(self.entities)} entities but {len(self.entity_types)} entity types")
        if self.counts.shape[0] != self.triples.shape[0]:
            raise ValueError(f"triples {self.triples.shape} and counts {self.counts.shape} disagree in length")
        if len(self.triples):
            if self.triples[:, [0, 2]].min() < 0 or self.triples[:, [0, 2]].max() >= len(self.entities):
                raise ValueError(f"an entity index in triples is outside [0, {len(self.entities)})")
            if self.triples[:, 1].min() < 0 or self.triples[:, 1].max() >= len(self.relations):
                raise ValueError(f"a relation index in triples is outside [0, {len(self.relations)})")
        self.entity_index = {e: i for i, e in enumerate(self.entities)}
        self.relation_index = {r: i for i, r in enumerate(self.relations)}
        if len(self.entity_index) != len(self.entities):
            raise ValueError("entity ids are not unique")

    def __len__(self):
        return len(self.triples)

    def __repr__(self):
        return f"KnowledgeGraph({len(self.entities)} entities, {len(self.relations)} relations, {len(self)} triples)"

    @classmethod
    def from_named(cls, named: dict[tuple[str, str, str], int], types: dict[str, str]) -> "KnowledgeGraph":
        """From {(head id, relation, tail id): count} and {entity id: type}; entities keep ``types``' order,
        relations and triples are sorted."""
        entities = list(types)
        relations = sorted({r for _, r, _ in named})
        eidx = {e: i for i, e in enumerate(entities)}
        ridx = {r: i for i, r in enumerate(relations)}
        missing = sorted({x for h, _, t in named for x in (h, t)} - set(eidx))
        if missing:
            raise ValueError(f"triples name entities without a type: {missing[:5]}")
        rows = sorted((eidx[h], ridx[r], eidx[t], c) for (h, r, t), c in named.items())
        arr = np.array([r[:3] for r in rows], dtype=np.int64).reshape(-1, 3)
        return cls(entities, [types[e] for e in entities], relations, arr, [r[3] for r in rows])

    def named(self) -> list[tuple[str, str, str, int]]:
        """The triples as (head id, relation, tail id, count)."""
        return [(self.entities[h], self.relations[r], self.entities[t], int(c))
                for (h, r, t), c in zip(self.triples.tolist(), self.counts.tolist())]

    def has(self, head: str, relation: str, tail: str) -> bool:
        h, r, t = self.entity_index.get(head), self.relation_index.get(relation), self.entity_index.get(tail)
        if h is None or r is None or t is None:
            return False
        return bool(((self.triples[:, 0] == h) & (self.triples[:, 1] == r) & (self.triples[:, 2] == t)).any())

    def count(self, head: str, relation: str, tail: str) -> int:
        h, r, t = self.entity_index.get(head), self.relation_index.get(relation), self.entity_index.get(tail)
        if h is None or r is None or t is None:
            return 0
        m = (self.triples[:, 0] == h) & (self.triples[:, 1] == r) & (self.triples[:, 2] == t)
        return int(self.counts[m].sum())

    # -- files ----------------------------------------------------------------------------------------------
    def to_tsv(self, path) -> Path:
        """Plain TSV: "# entity<TAB>id<TAB>type" and "# relation<TAB>name" comment lines (so entity and relation
        order, isolated entities and types survive), a header "head relation tail count", one triple a row."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for name in self.entities + self.relations:
            if "\t" in name or "\n" in name:
                raise ValueError(f"a name holds a tab or newline and cannot be written as TSV: {name!r}")
        rows = [f"# entity\t{e}\t{t}" for e, t in zip(self.entities, self.entity_types)]
        rows += [f"# relation\t{r}" for r in self.relations]
        rows.append("head\trelation\ttail\tcount")
        rows += [f"{h}\t{r}\t{t}\t{c}" for h, r, t, c in self.named()]
        path.write_text("\n".join(rows) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_tsv(cls, path) -> "KnowledgeGraph":
        """Read ``to_tsv``'s file back.  Without the comment lines, entities and relations are taken in order
        of first use and typed by their id ("play:", "genre:", "place:", else character)."""
        path = Path(path)
        entities, types, relations, rows = [], [], [], []
        for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
            if not line.strip():
                continue
            cols = line.split("\t")
            if line.startswith("# entity"):
                if len(cols) != 3:
                    raise ValueError(f"{path}:{n}: an entity line needs '# entity<TAB>id<TAB>type'; got {line!r}")
                entities.append(cols[1])
                types.append(cols[2])
            elif line.startswith("# relation"):
                relations.append(cols[1])
            elif line.startswith("#") or cols == ["head", "relation", "tail", "count"]:
                continue
            else:
                if len(cols) != 4:
                    raise ValueError(f"{path}:{n}: expected 4 tab-separated columns (head, relation, tail, "
                                     f"count); got {len(cols)}: {line!r}")
                try:
                    rows.append((cols[0], cols[1], cols[2], int(cols[3])))
                except ValueError:
                    raise ValueError(f"{path}:{n}: the count {cols[3]!r} is not an integer") from None
        if not entities:
            for h, _, t, _ in rows:
                for e in (h, t):
                    if e not in entities:
                        entities.append(e)
            types = [e.split(":", 1)[0] if re.match(r"^(play|genre|place):", e) else "character" for e in entities]
        if not relations:
            relations = list(dict.fromkeys(r for _, r, _, _ in rows))
        eidx = {e: i for i, e in enumerate(entities)}
        ridx = {r: i for i, r in enumerate(relations)}
        try:
            arr = [(eidx[h], ridx[r], eidx[t]) for h, r, t, _ in rows]
        except KeyError as e:
            raise ValueError(f"{path}: a triple names {e.args[0]!r}, which the entity/relation lines do not list")
        return cls(entities, types, relations, np.array(arr, dtype=np.int64).reshape(-1, 3), [r[3] for r in rows])

    # -- summaries ------------------------------------------------------------------------------------------
    def report(self) -> dict:
        """{"relations": {relation: (triples, summed count)}, "entity_types": {type: entities}, "triples": N}."""
        rel = {}
        for r_i, r in enumerate(self.relations):
            m = self.triples[:, 1] == r_i
            rel[r] = (int(m.sum()), int(self.counts[m].sum()))
        types = {}
        for t in self.entity_types:
            types[t] = types.get(t, 0) + 1
        return {"relations": rel, "entity_types": types, "triples": len(self), "entities": len(self.entities)}

    def subset(self, mask) -> "KnowledgeGraph":
        """The same entities and relations (same ids) with only the triples where ``mask`` is True."""
        mask = np.asarray(mask, dtype=bool)
        return KnowledgeGraph(self.entities, self.entity_types, self.relations, self.triples[mask],
                              self.counts[mask])

    def split(self, test_fraction: float = 0.1, seed: int = 0,
              keep_in_train=("genre_of", "appears_in")) -> tuple["KnowledgeGraph", "KnowledgeGraph"]:
        """(train, test) for link prediction, sharing entity and relation ids.

        The rule: triples of relations in ``keep_in_train`` always train.  The others are visited in the order
        of ``np.random.default_rng(seed).permutation``; one goes to test while test holds fewer than
        ``round(test_fraction * eligible)`` and, after removing it, both its head and its tail still occur in
        some train triple (so every test entity has an embedding to learn).  Train and test are disjoint and
        together are the graph; the same seed gives the same split.
        """
        if not 0 <= test_fraction < 1:
            raise ValueError(f"test_fraction must be in [0, 1); got {test_fraction}")
        keep = {self.relation_index[r] for r in keep_in_train if r in self.relation_index}
        eligible = np.flatnonzero(~np.isin(self.triples[:, 1], list(keep)))
        target = int(round(test_fraction * len(eligible)))
        degree = np.bincount(self.triples[:, [0, 2]].ravel(), minlength=len(self.entities))
        test = np.zeros(len(self), dtype=bool)
        rng = np.random.default_rng(seed)
        taken = 0
        for i in eligible[rng.permutation(len(eligible))]:
            if taken >= target:
                break
            h, _, t = self.triples[i]
            need = 2 if h == t else 1
            if degree[h] > need and degree[t] > need or (h != t and degree[h] > 1 and degree[t] > 1):
                degree[h] -= 1
                degree[t] -= 1
                test[i] = True
                taken += 1
        return self.subset(~test), self.subset(test)


def build_knowledge_graph(works=None, plays: list[Play] | None = None) -> tuple[KnowledgeGraph, list[Play]]:
    """The graph of the plays among ``works`` (or of already parsed ``plays``): entities and relations as in
    the module docstring.  Returns (graph, parsed plays)."""
    if plays is None:
        plays = parse_plays(works)
    types: dict[str, str] = {}
    named: dict[tuple[str, str, str], int] = {}

    def add(h, r, t, c=1):
        named[(h, r, t)] = named.get((h, r, t), 0) + c

    for g in sorted({p.genre for p in plays}):
        types[f"genre:{g}"] = "genre"
    for play in plays:
        pid = f"play:{play.title}"
        types[pid] = "play"
        add(pid, "genre_of", f"genre:{play.genre}")
        for i in range(len(play.persons.persons)):
            types[play.person_id(i)] = "character"
        for h, r, t in play.persons.relations:
            add(play.person_id(h), r, play.person_id(t))
        for h, r, place in play.persons.titles:
            types.setdefault(f"place:{place}", "place")
            add(play.person_id(h), r, f"place:{place}")
        for role_id in play.roles.values():
            types.setdefault(role_id, "role")
        prev = None
        for sp in play.speeches:
            for ent in sp.ids:
                add(ent, "appears_in", pid)
            single = sp.ids[0] if sp.kind in ("character", "role") else None
            if prev is not None and single is not None and prev[0] == sp.scene and prev[1] != single:
                a, b = prev[1], single
                add(a, "speaks_to", b)
            prev = (sp.scene, single) if single is not None else None
    # speaks_to is symmetric: fold (b, a) onto (a, b) with a before b in entity order
    order = {e: i for i, e in enumerate(types)}
    folded: dict[tuple[str, str, str], int] = {}
    for (h, r, t), c in named.items():
        if r == "speaks_to" and order[h] > order[t]:
            h, t = t, h
        folded[(h, r, t)] = folded.get((h, r, t), 0) + c
    return KnowledgeGraph.from_named(folded, types), plays
