"""The enwik8 cleaner (tokenization/wiki.py): each documented rule on a hand-written article."""

from tokenization.wiki import clean_article, clean_wiki, looks_like_wiki_xml


def test_links_templates_and_markup_are_removed_or_unwrapped():
    body = ("{{Infobox {{nested|x}} city}}'''Paris''' is the [[capital city|capital]] of "
            "[[France]].&lt;ref&gt;a source&lt;/ref&gt; See http://example.org now.\n"
            "== History ==\n"
            "* a list line\n"
            "It has &quot;cafés&quot; &amp; parks.<br/>\n\n\n\n"
            "[[Category:Capitals]][[Image:Paris.jpg|thumb|a [[river]] view]][[de:Paris]]"
            "{| class=table\n| cell\n|}End.")
    assert clean_article(body) == (
        "Paris is the capital of France. See  now.\n\n"  # header + list line gone, 3+ \n -> 2
        "It has  cafs    parks.\n\nEnd.")


def test_redirects_vanish_and_articles_are_joined_by_newlines():
    xml = ('<mediawiki><page><text xml:space="preserve">#REDIRECT [[Elsewhere]]</text></page>'
           '<page><text xml:space="preserve">One [[two]] three.</text></page>'
           '<page><text>Four ⏎ five\tsix</text></page></mediawiki>')
    assert clean_wiki(xml) == "One two three.\nFour ⏎ fivesix\n"
    assert looks_like_wiki_xml(xml) and not looks_like_wiki_xml("plain text, no xml")
