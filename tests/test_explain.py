"""The explain page's per-class alpha summary."""
from taro_ext.explain import alpha_by_class, render_html
from taro_ext.generation import GenerationOutput
from taro_ext.tiny import char_tokenizer


def test_alpha_by_class_groups_generated_tokens_and_the_page_shows_it():
    tok = char_tokenizer()
    ids = [tok.convert_tokens_to_ids(c) for c in "ab 7+"]
    out = GenerationOutput(["ab 7+"], [ids], [[0.1, 0.3, 0.0, 1.5, 1.0]], [3])
    groups = alpha_by_class(out, tok)
    assert groups == {"digit": [1.5], "operator": [1.0], "whitespace": [0.0], "letter": [0.1, 0.3]}
    page = render_html(out, tok, ["q"], alpha_max=2.0)
    assert "<td>letter</td><td>2</td><td>0.200</td>" in page
    assert "<td>digit</td><td>1</td><td>1.500</td>" in page
