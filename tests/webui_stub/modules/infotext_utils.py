"""``modules.infotext_utils``: ``PasteField``, quoting, parsing the parameters line, the paste step."""
import json
import re

re_param = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


class PasteField(tuple):
    def __new__(cls, component, target, *, api=None):
        return super().__new__(cls, (component, target))

    def __init__(self, component, target, *, api=None):
        super().__init__()
        self.api = api
        self.component = component
        self.label = target if isinstance(target, str) else None
        self.function = target if callable(target) else None


def quote(text):
    if ',' not in str(text) and '\n' not in str(text) and ':' not in str(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text):
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def parse_generation_parameters(x: str):
    """The last line's ``key: value`` pairs as strings (prompt lines are not needed by these tests)."""
    res = {}
    lastline = x.strip().split("\n")[-1]
    for k, v in re_param.findall(lastline):
        res[k] = unquote(v.strip())
    return res


def paste_values(paste_fields, params):
    """What pasting ``params`` sets each component to (None: left unchanged), as ``connect_paste``'s paste_func."""
    res = []
    for output, key in paste_fields:
        v = key(params) if callable(key) else params.get(key, None)
        if v is None:
            res.append(None)
            continue
        valtype = type(output.value)
        if valtype == bool and v == "False":
            res.append(False)
        elif valtype == int:
            res.append(float(v))
        else:
            res.append(valtype(v))
    return res
