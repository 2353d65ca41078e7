"""JSON read from files (a Keras config, a safetensors header): how deep it nests,
measured without recursion, before anything walks it recursively."""

__all__ = ["json_depth"]


def json_depth(doc, limit):
    """How deep parsed JSON nests lists and dicts: counted level by level, without
    recursion, and only up to ``limit + 1``."""
    level, depth, containers = [doc], 0, (dict, list)
    while True:
        level = [o for o in level if type(o) in containers]
        if not level:
            return depth
        depth += 1
        if depth > limit:
            return depth
        nxt: list = []
        for o in level:
            nxt.extend(o.values() if type(o) is dict else o)
        level = nxt
