#!/usr/bin/env python3
"""Reference fixtures for translate's corpus BLEU and chrF: sacrebleu with default settings.

Run from the repository root (needs only `sacrebleu`, pinned in requirements.txt):

    python3 scripts/reference/sacrebleu_ref.py

It (re)writes crates/translate/tests/fixtures/sacrebleu.json, a list of cases, each with
  name,
  hyps: [str, ...]                          hypotheses, one per segment,
  refs: [[str, ...], ...]                   reference streams, each as long as hyps,
  bleu: {score, counts, totals, precisions, bp, sys_len, ref_len}
        from sacrebleu.metrics.BLEU().corpus_score(hyps, refs): tokenizer 13a, mixed case,
        smooth_method "exp", max_ngram_order 4, effective_order False (the corpus default),
  chrf: {score}
        from sacrebleu.metrics.CHRF().corpus_score(hyps, refs): chrF2, char order 6,
        word order 0, beta 2, whitespace excluded, eps_smoothing False,
  sentence_bleu: [float, ...]
        BLEU(effective_order=True).sentence_score(hyp, [refs[0][i]]).score per hypothesis,
        against the first reference stream only (for validation printing),
  tok_13a: {hyps: [str, ...], refs: [[str, ...], ...]}
        what BLEU feeds to n-gram extraction: Tokenizer13a()(segment.rstrip()).

Scores are sacrebleu's unrounded floats (it rounds only when printing: 2 decimals for the
score), written with full precision. The JSON has sorted keys, indent 1, non-ASCII text as
UTF-8 (control characters escaped); rerunning with the same sacrebleu version gives a
byte-identical file. Some segments hold invisible characters on purpose (NBSP, thin space,
U+001F, zero-width space, a combining accent); the case comments below say where.

Every case asserts the property it is there for (bp below 1, a zero-match n-gram order, a tie
in the closest-reference-length rule, ...), so a changed sentence cannot silently lose it.
"""

import json
import os

import sacrebleu
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "crates", "translate", "tests", "fixtures", "sacrebleu.json")

TOK = Tokenizer13a()


def tok(s):
    return TOK(s.rstrip())


def case(name, hyps, refs):
    if refs and isinstance(refs[0], str):
        refs = [refs]
    for stream in refs:
        assert len(stream) == len(hyps), name
    b = BLEU().corpus_score(hyps, refs)
    c = CHRF().corpus_score(hyps, refs)
    sent = BLEU(effective_order=True)
    return {
        "name": name,
        "hyps": list(hyps),
        "refs": [list(s) for s in refs],
        "bleu": {
            "score": float(b.score),
            "counts": [int(x) for x in b.counts],
            "totals": [int(x) for x in b.totals],
            "precisions": [float(x) for x in b.precisions],
            "bp": float(b.bp),
            "sys_len": int(b.sys_len),
            "ref_len": int(b.ref_len),
        },
        "chrf": {"score": float(c.score)},
        "sentence_bleu": [float(sent.sentence_score(h, [r]).score) for h, r in zip(hyps, refs[0])],
        "tok_13a": {
            "hyps": [tok(h) for h in hyps],
            "refs": [[tok(r) for r in s] for s in refs],
        },
    }


# About 40 help-text-like sentences (written for this fixture, in the style of office-suite
# help pages), each with a plausible machine translation: synonyms, reordering, dropped or
# added words, and a few exact matches.
HELP_TEXT = [
    ("Wählen Sie Format - Zellen und klicken Sie auf das Register Zahlen.",
     "Wählen Sie Format - Zellen und klicken Sie auf die Registerkarte Zahlen."),
    ("Um eine neue Tabelle einzufügen, klicken Sie mit der rechten Maustaste auf ein Tabellenregister.",
     "Um eine neue Tabelle einzufügen, klicken Sie mit rechts auf ein Tabellenregister."),
    ("Legt fest, ob leere Zeilen beim Sortieren berücksichtigt werden.",
     "Legt fest, ob leere Zeilen beim Sortieren beachtet werden."),
    ("Drücken Sie Strg+Umschalt+F9, um alle Formeln neu zu berechnen.",
     "Drücken Sie Strg+Umschalt+F9, um sämtliche Formeln neu zu berechnen."),
    ("Die Funktion SUMMEWENN addiert die Werte eines Bereichs, die ein Kriterium erfüllen.",
     "Die Funktion SUMMEWENN summiert Werte eines Bereichs, die einem Kriterium entsprechen."),
    ("Geben Sie im Feld „Name“ einen Namen für die Vorlage ein.",
     "Geben Sie im Feld „Name“ den Namen der Vorlage ein."),
    ("Diese Option ist nur verfügbar, wenn ein Diagramm ausgewählt ist.",
     "Diese Option ist nur verfügbar, wenn Sie ein Diagramm ausgewählt haben."),
    ("Klicken Sie auf OK, um die Änderungen zu übernehmen.",
     "Klicken Sie auf OK, um die Änderungen zu übernehmen."),
    ("Wenn Sie ein Dokument als PDF exportieren, bleiben Hyperlinks erhalten.",
     "Beim Export eines Dokuments als PDF bleiben Hyperlinks erhalten."),
    ("Öffnet einen Dialog, in dem Sie die Seitenränder einstellen können.",
     "Öffnet ein Dialogfeld, in dem Sie die Seitenränder festlegen können."),
    ("Die Standardschriftart für Überschriften ist Liberation Sans.",
     "Die Standardschrift für Überschriften ist Liberation Sans."),
    ("Ziehen Sie den Rahmen an die gewünschte Position und lassen Sie die Maustaste los.",
     "Ziehen Sie den Rahmen an die gewünschte Stelle und lassen Sie die Maustaste los."),
    ("Mit dieser Schaltfläche wird die Rechtschreibprüfung gestartet.",
     "Diese Schaltfläche startet die Rechtschreibprüfung."),
    ("Aktivieren Sie das Markierfeld, um Zeilenumbrüche anzuzeigen.",
     "Aktivieren Sie das Kontrollkästchen, um Zeilenumbrüche anzuzeigen."),
    ("Die Datei konnte nicht gespeichert werden, da der Datenträger voll ist.",
     "Die Datei konnte nicht gespeichert werden, weil der Datenträger voll ist."),
    ("Sie können bis zu 255 Bedingungen für eine bedingte Formatierung festlegen.",
     "Sie können bis zu 255 Bedingungen für bedingte Formatierungen angeben."),
    ("Markieren Sie den Text, den Sie als Hyperlink verwenden möchten.",
     "Markieren Sie den Text, der als Hyperlink verwendet werden soll."),
    ("Wählen Sie Extras - Optionen - LibreOffice Writer - Formatierungshilfen.",
     "Wählen Sie Extras - Optionen - LibreOffice Writer - Formatierungshilfen."),
    ("Der Navigator zeigt alle Objekte an, die im Dokument enthalten sind.",
     "Der Navigator zeigt sämtliche Objekte an, die das Dokument enthält."),
    ("Doppelklicken Sie auf eine Grafik, um das Dialogfeld Bild zu öffnen.",
     "Doppelklicken Sie auf ein Bild, um den Dialog Bild zu öffnen."),
    ("Die Tabellenüberschrift wird auf jeder neuen Seite wiederholt.",
     "Die Überschrift der Tabelle wird auf jeder Seite wiederholt."),
    ("Geben Sie den Faktor ein, um den das Bild vergrößert werden soll.",
     "Geben Sie den Faktor ein, um welchen das Bild vergrößert werden soll."),
    ("Standardmäßig werden Kommentare am rechten Seitenrand angezeigt.",
     "Kommentare werden standardmäßig am rechten Rand angezeigt."),
    ("Verwenden Sie die Tastenkombination Strg+Z, um den letzten Schritt rückgängig zu machen.",
     "Verwenden Sie Strg+Z, um den letzten Schritt rückgängig zu machen."),
    ("Ein Verzeichnis kann aus Einträgen mehrerer Dokumente erstellt werden.",
     "Ein Verzeichnis kann aus den Einträgen mehrerer Dokumente erzeugt werden."),
    ("Im Bereich Vorschau sehen Sie, wie sich die Einstellungen auswirken.",
     "Im Vorschaubereich sehen Sie die Auswirkung der Einstellungen."),
    ("Fügt an der Cursorposition einen manuellen Seitenumbruch ein.",
     "Fügt einen manuellen Seitenumbruch an der Cursorposition ein."),
    ("Die Zeichenkette darf höchstens 64 Zeichen lang sein.",
     "Die Zeichenfolge darf maximal 64 Zeichen lang sein."),
    ("Wenn das Makro signiert ist, wird es ohne Rückfrage ausgeführt.",
     "Ist das Makro signiert, wird es ohne Nachfrage ausgeführt."),
    ("Klicken Sie auf Durchsuchen, um die gewünschte Datei auszuwählen.",
     "Klicken Sie auf Durchsuchen und wählen Sie die gewünschte Datei aus."),
    ("Der Wert muss zwischen 0,5 cm und 10 cm liegen.",
     "Der Wert muss zwischen 0,5 cm und 10 cm liegen."),
    ("Diese Einstellung gilt für alle neuen Dokumente.",
     "Diese Einstellung gilt für sämtliche neue Dokumente."),
    ("Sortiert die markierten Zeilen in aufsteigender Reihenfolge.",
     "Sortiert die ausgewählten Zeilen aufsteigend."),
    ("Über das Kontextmenü können Sie die Spaltenbreite anpassen.",
     "Über das Kontextmenü lässt sich die Spaltenbreite anpassen."),
    ("Eine Formel beginnt immer mit einem Gleichheitszeichen (=).",
     "Eine Formel beginnt stets mit einem Gleichheitszeichen (=)."),
    ("Geben Sie die Anzahl der Spalten und Zeilen für die neue Tabelle an.",
     "Geben Sie die Anzahl der Zeilen und Spalten der neuen Tabelle an."),
    ("Die Hilfe ist auch ohne Internetverbindung verfügbar.",
     "Die Hilfe steht auch offline zur Verfügung."),
    ("Mit der AutoKorrektur werden häufige Tippfehler automatisch berichtigt.",
     "Die AutoKorrektur berichtigt häufige Tippfehler automatisch."),
    ("Legen Sie fest, wie viele Dezimalstellen angezeigt werden sollen.",
     "Legen Sie fest, wie viele Nachkommastellen angezeigt werden."),
    ("Speichern Sie das Dokument im ODF-Format, um alle Formatierungen zu erhalten.",
     "Speichern Sie das Dokument im ODF-Format, damit alle Formatierungen erhalten bleiben."),
]


def main():
    cases = []

    # Umlauts, sharp s, accented capitals, curly quotes and apostrophe, en and em dashes.
    # None of these is split by 13a (its punctuation classes are ASCII only).
    c = case("unicode", [
        "Die Größe der Schrift lässt sich über „Format – Zeichen“ ändern.",
        "Die Änderungen an der Straßenkarte wurden übernommen.",
        "ÄÖÜ äöü ss – Sonderzeichen müssen richtig dargestellt werden.",
        "The café’s owner Zoë said: “Our crème brûlée is the best — by far”.",
        "Élise besucht die École normale in Ørsted.",
    ], [
        "Die Größe der Schriftart lässt sich über „Format – Zeichen“ ändern.",
        "Änderungen an der Straßenkarte wurden übernommen.",
        "ÄÖÜ äöü ß – Sonderzeichen müssen korrekt dargestellt werden.",
        "The café’s owner, Zoë, said: “Our crème brûlée is the best – by far.”",
        "Élise besucht die École Normale in Ørsted.",
    ])
    assert "„Format" in c["tok_13a"]["hyps"][0].split()
    cases.append(c)

    # Runs of !, ., ? and commas.
    cases.append(case("punctuation_runs", [
        "Achtung! Die Datei wird gelöscht...",
        "Wirklich?! Das kann doch nicht sein!!",
        "Wait ... what?!? No way!!!",
        "Loading... please wait, ok??",
        "Ja,, nein,,, vielleicht.",
    ], [
        "Achtung!!! Die Datei wird gelöscht...",
        "Wirklich?! Das kann nicht sein!",
        "Wait... what?! No way!!!",
        "Loading.... please wait, ok?",
        "Ja, nein, vielleicht...",
    ]))

    # Separators inside numbers are kept (a period or comma between digits), a digit followed
    # by a hyphen is split.
    c = case("numbers", [
        "The total is $1,000.50 and not 3.14.",
        "Pi is about 3.14, e is 2.718.",
        "Der Preis beträgt 1.000,50 EUR (inkl. 19% MwSt.).",
        "Die Seiten 10-15 und 20-25 wurden gedruckt.",
        "Version 2.0.1 was released on 15.03.2024.",
    ], [
        "The total is $1,000.50, not 3.14.",
        "Pi is approximately 3.14159, e is 2.718.",
        "Der Preis beträgt 1.000,50 € (inkl. 19 % MwSt.).",
        "Seiten 10-15 und 20–25 wurden gedruckt.",
        "Version 2.0.1 was released on 2024-03-15.",
    ])
    assert "1,000.50" in c["tok_13a"]["hyps"][0].split()
    cases.append(c)

    cases.append(case("empty_hyp_among_others", [
        "Das Dokument wurde gespeichert.",
        "",
        "Bitte starten Sie das Programm neu.",
        "The file could not be opened.",
    ], [
        "Das Dokument wurde erfolgreich gespeichert.",
        "Die Verbindung zum Server wurde getrennt.",
        "Bitte starten Sie das Programm neu.",
        "The file could not be opened because it is locked.",
    ]))

    c = case("all_hyps_empty", ["", "", ""], [
        "Der Drucker ist nicht bereit.",
        "Press Enter to continue.",
        "Keine Einträge gefunden.",
    ])
    assert c["bleu"]["score"] == 0.0 and c["bleu"]["bp"] == 0.0 and c["chrf"]["score"] == 0.0
    cases.append(c)

    # Whitespace only: BLEU rstrips to empty, chrF drops all whitespace.
    c = case("whitespace_only_hyps", [" ", "\t \t", "\n", "   \r\n  "], [
        "Die Tabelle ist leer.",
        "Nothing to see here.",
        "Kein Text.",
        "Ein weiterer Satz.",
    ])
    assert c["bleu"]["sys_len"] == 0 and c["chrf"]["score"] == 0.0
    cases.append(c)

    c = case("hyp_longer_bp1", [
        "Klicken Sie bitte auf die Schaltfläche OK, um den Dialog jetzt zu schließen.",
        "The selected cells in the current sheet are deleted immediately and permanently.",
        "Sie können die Symbolleiste jederzeit über das Menü Ansicht wieder einblenden.",
    ], [
        "Klicken Sie auf OK, um den Dialog zu schließen.",
        "The selected cells are deleted.",
        "Sie können die Symbolleiste über Ansicht einblenden.",
    ])
    assert c["bleu"]["bp"] == 1.0 and c["bleu"]["sys_len"] > c["bleu"]["ref_len"]
    cases.append(c)

    c = case("hyp_shorter_bp_lt1", [
        "Klicken Sie auf OK.",
        "The cells are deleted.",
        "Die Symbolleiste einblenden.",
    ], [
        "Klicken Sie auf OK, um den Dialog zu schließen.",
        "The selected cells in the current sheet are deleted immediately.",
        "Sie können die Symbolleiste jederzeit über das Menü Ansicht einblenden.",
    ])
    assert 0.0 < c["bleu"]["bp"] < 1.0
    cases.append(c)

    cases.append(case("single_segment",
                      ["Die Seitenvorlage bestimmt das Layout der einzelnen Seiten."],
                      ["Die Seitenvorlage legt das Layout der einzelnen Seiten fest."]))

    # Unigrams, bigrams and trigrams match, 4-grams do not: exp smoothing gives p4 = 100 / (2 t4).
    c = case("zero_4gram_matches", [
        "the cat sat on a red mat near the door",
        "Die Datei wurde heute gespeichert und gestern gedruckt.",
    ], [
        "the cat sat under one red mat near her door",
        "Die Datei wurde gestern gedruckt und heute gespeichert.",
    ])
    k = c["bleu"]["counts"]
    assert k[2] > 0 and k[3] == 0, k
    cases.append(c)

    # Only unigrams and bigrams match: p3 = 100 / (2 t3), p4 = 100 / (4 t4).
    c = case("zero_3_and_4gram_matches", [
        "Speichern Sie Dokument das jetzt bitte unter neuem Namen ab.",
        "open file the now please and close it",
    ], [
        "Bitte speichern Sie das Dokument jetzt unter einem neuen Namen.",
        "please open the file now and then close it",
    ])
    k = c["bleu"]["counts"]
    assert k[1] > 0 and k[2] == 0 and k[3] == 0, k
    cases.append(c)

    # Every hypothesis is shorter than 4 tokens: no 4-grams at all (t4 = 0). The corpus score
    # (effective_order False) is 0 (log 0 floored to -9999999999); sentence BLEU with
    # effective order is not.
    c = case("no_4grams", ["Ja", "Abbrechen", "OK ."], ["Ja", "Abbrechen", "OK !"])
    assert c["bleu"]["totals"][3] == 0 and c["bleu"]["counts"][0] > 0 and c["bleu"]["score"] == 0.0
    assert max(c["sentence_bleu"]) > 0.0
    cases.append(c)

    # No n-gram matches at all: sacrebleu's early exit (score 0, all precisions 0).
    c = case("no_overlap", ["Guten Morgen zusammen", "completely unrelated output here"],
             ["Auf Wiedersehen", "Die Datei fehlt ."])
    assert not any(c["bleu"]["counts"]) and c["bleu"]["precisions"] == [0.0] * 4
    cases.append(c)

    refs = [
        "Wählen Sie Bearbeiten - Suchen & Ersetzen.",
        "The document contains 3 tables and 12 images.",
        "Drücken Sie die Eingabetaste.",
    ]
    c = case("exact_match", list(refs), refs)
    assert abs(c["bleu"]["score"] - 100.0) < 1e-9 and abs(c["chrf"]["score"] - 100.0) < 1e-9
    cases.append(c)

    # 13a edge cases: hyphens, apostrophes, entities (also double-escaped: &amp;lt; becomes <
    # because &amp; is replaced before &lt;, &amp;quot; stays &quot;; &apos; is not handled),
    # <skipped> (removed before entities are unescaped, so &lt;skipped&gt; survives), a URL,
    # trailing whitespace, tabs, a hyphen before a newline (joined), ASCII symbols, periods and
    # commas next to digits or not.
    c = case("tokenization_13a", [
        "The state-of-the-art e-mail client isn't what you'd expect.",
        "Tom &amp; Jerry use &lt;b&gt; tags and &quot;quotes&quot;.",
        "Double escaped: &amp;lt;tag&amp;gt; and &amp;quot;x&amp;quot; and &apos;y&apos;.",
        "Some text <skipped> was removed, but &lt;skipped&gt; stays.",
        "Visit https://help.example.org/de/index.html?lang=de&id=42#top for details.",
        "Trailing whitespace here.   \t  ",
        "Columns\tseparated\tby\ttabs.",
        "Line-\nbreak joined and a second\nline.",
        "Symbols: a+b=c, x*y, 50/50, [brackets], {braces}, ~tilde~, under_score, back\\slash, `tick`, ^caret, |pipe|, @user, #tag, 100%.",
        "Ranges 1990-2000 and x-5 and 5-x; also -5 and 5- .",
        "Cases: 'single quotes', rock 'n' roll, O'Neill's.",
        ".Leading period, ,leading comma and a.b.c and 1.a and a.1 and 1,2,3 and 1..2.",
    ], [
        "The state-of-the-art email client is not what you would expect.",
        "Tom & Jerry use <b> tags and \"quotes\".",
        "Double escaped: <tag> and &quot;x&quot; and 'y'.",
        "Some text was removed, but <skipped> stays.",
        "Visit https://help.example.org/de/index.html?lang=de&id=42 for details.",
        "Trailing whitespace here.",
        "Columns separated by tabs.",
        "Linebreak joined and a second line.",
        "Symbols: a+b=c, x*y, 50/50, [brackets], {braces}, ~tilde~, under_score, back\\slash, `tick`, ^caret, |pipe|, @user, #tag, 100 %.",
        "Ranges 1990 - 2000 and x-5 and 5-x; also - 5 and 5 - .",
        "Cases: \"single quotes\", rock 'n' roll, O'Neill's.",
        ". Leading period, , leading comma and a. b. c and 1. a and a. 1 and 1, 2, 3 and 1. . 2.",
    ])
    assert c["tok_13a"]["hyps"][5] == "Trailing whitespace here ."
    assert c["tok_13a"]["hyps"][7].startswith("Linebreak")
    assert c["tok_13a"]["hyps"][2].startswith("Double escaped : < tag > and & quot ; x & quot ;")
    cases.append(c)

    # Two reference streams: reference n-gram counts are merged with max, the closest
    # reference length is used (on a tie, the shorter one), chrF keeps the statistics of the
    # reference with the best sentence chrF.
    hyps = [
        "The government announced new measures against inflation on Monday.",
        "Die Polizei hat den Verdächtigen am Bahnhof festgenommen.",
        "Officials said the bridge will be closed for two weeks.",
        "Der Zug hatte wegen eines Signalfehlers eine Stunde Verspätung.",
        "The company reported record profits this year.",
        "Im Norden wird es morgen regnerisch und kühl.",
    ]
    refs = [
        [
            "On Monday the government announced new measures to fight inflation.",
            "Die Polizei nahm den Verdächtigen am Bahnhof fest.",
            "The bridge will be closed for two weeks, officials said.",
            "Wegen einer Signalstörung hatte der Zug eine Stunde Verspätung.",
            "The company reported record profits.",
            "Morgen wird es im Norden regnerisch und kühl.",
        ],
        [
            "The government unveiled new anti-inflation measures on Monday.",
            "Die Polizei hat den Verdächtigen am Bahnhof verhaftet.",
            "According to officials, the bridge is going to be closed for two weeks.",
            "Der Zug war wegen eines Signalfehlers eine Stunde zu spät.",
            "This year, the company posted record profits once again.",
            "Im Norden wird es morgen regnerisch.",
        ],
    ]
    c = case("two_references", hyps, refs)
    ties = 0
    for i, h in enumerate(hyps):
        hl = len(tok(h).split())
        d = [abs(hl - len(tok(s[i]).split())) for s in refs]
        ties += d[0] == d[1] and len(tok(refs[0][i]).split()) != len(tok(refs[1][i]).split())
    assert ties >= 1, "want a tie in the closest-reference-length rule"
    cases.append(c)

    cases.append(case("three_references", [
        "Klicken Sie auf Übernehmen.",
        "Das Bild wird in das Dokument eingefügt.",
        "Error: the file is write-protected.",
    ], [
        ["Klicken Sie auf Anwenden.", "Das Bild wird ins Dokument eingefügt.",
         "Error: The file is read-only."],
        ["Klicken Sie bitte auf Übernehmen.", "Die Grafik wird in das Dokument eingefügt.",
         "Error: the file is write protected."],
        ["Wählen Sie Übernehmen.", "Das Bild wird eingefügt.",
         "Fehler: the file is write-protected!"],
    ]))

    # An empty reference segment: its hypothesis n-grams all count as unmatched for BLEU
    # (ref length 0); for chrF the hypothesis counts of that segment are zeroed, since the
    # reference has no n-grams of any order.
    cases.append(case("empty_reference_segment", [
        "Das ist gut.",
        "Ein Satz ohne Referenz.",
        "Noch ein Satz hier.",
    ], [
        "Das ist gut.",
        "",
        "Noch ein Satz.",
    ]))

    # References shorter than 6 characters: chrF zeroes the hypothesis count of each order
    # the reference has no n-gram of.
    cases.append(case("short_reference", ["Jawohl", "Okay.", "Nein, danke"], ["Ja", "OK.", "Nein danke"]))

    # Non-ASCII whitespace: NBSP (U+00A0), thin space (U+2009), narrow NBSP (U+202F),
    # ideographic space (U+3000) and U+001F are whitespace for Python's str.split (U+001C..U+001F
    # are not White_Space in Unicode, so Rust's char::is_whitespace disagrees); the zero-width
    # space (U+200B) is not whitespace and glues words together.
    cases.append(case("unicode_whitespace", [
        "Der Rabatt beträgt 10\u00a0% auf alle Artikel.",
        "Die Datei ist 1\u202f000 Byte groß.",
        "Zwischen\u2009den\u2009Wörtern stehen schmale Leerzeichen.",
        "Felder\u001fgetrennt durch Steuerzeichen.",
        "Ein\u3000breites\u3000Leerzeichen.",
        "Null\u200bbreite Leerzeichen verbinden Wörter.",
    ], [
        "Der Rabatt beträgt 10 % auf alle Artikel.",
        "Die Datei ist 1 000 Byte groß.",
        "Zwischen den Wörtern stehen schmale Leerzeichen.",
        "Felder getrennt durch Steuerzeichen.",
        "Ein breites Leerzeichen.",
        "Nullbreite Leerzeichen verbinden Wörter.",
    ]))

    # Decomposed (NFD) hypotheses against precomposed (NFC) references: sacrebleu compares
    # code points without normalisation, and chrF n-grams are code-point n-grams.
    cases.append(case("unicode_combining", [
        "Cafe\u0301 Mu\u0308ller o\u0308ffnet um acht.",
        "Die Größe wird automatisch angepasst.",
    ], [
        "Café Müller öffnet um acht.",
        "Die Gro\u0308ße wird automatisch angepasst.",
    ]))

    c = case("help_text_de", [h for _, h in HELP_TEXT], [r for r, _ in HELP_TEXT])
    assert len(c["hyps"]) == 40
    cases.append(c)

    names = [c["name"] for c in cases]
    assert len(set(names)) == len(names)

    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(cases, f, sort_keys=True, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {OUT} (sacrebleu {sacrebleu.__version__})")


if __name__ == "__main__":
    main()
