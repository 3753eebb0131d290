"""A model card's YAML front matter parsed at a bounded cost, for the Hub's validate-yaml."""

from __future__ import annotations

import functools
import re
from typing import Any

MAX_YAML_BODY = 1024 * 1024  # a README sent for validation
MAX_FRONT_MATTER = 64 * 1024  # the YAML that is parsed of it (PyYAML in pure Python: about 10 us a byte)
MAX_YAML_NODES = 10_000  # values the front matter may hold, aliases expanded
MAX_YAML_DEPTH = 64


class FrontMatterError(Exception):
    """YAML front matter that does not parse, or costs more to parse than any model card does."""


@functools.cache
def _bounded_loader() -> Any:
    import yaml  # a dependency of huggingface_hub; only needed for validate-yaml

    class BoundedLoader(yaml.SafeLoader):  # type: ignore[misc]
        """The safe loader (no Python objects), refusing nesting deeper than MAX_YAML_DEPTH and more than
        MAX_YAML_NODES values as it builds them."""

        depth = 0
        nodes = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            self.depth += 1
            self.nodes += 1
            try:
                if self.depth > MAX_YAML_DEPTH:
                    raise FrontMatterError(f"nested deeper than {MAX_YAML_DEPTH} levels")
                if self.nodes > MAX_YAML_NODES:
                    raise FrontMatterError(f"more than {MAX_YAML_NODES} values")
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    return BoundedLoader


def _expanded_size(node: Any) -> int:
    """How many nodes `node` holds once aliases are expanded (a billion laughs is a few bytes that expand to
    10**9); refused past MAX_YAML_NODES, and an alias that holds itself is refused."""
    import yaml

    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(n: Any) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        if id(n) in active:
            raise FrontMatterError("an alias refers to itself")
        active.add(id(n))
        if isinstance(n, yaml.MappingNode):
            children = [child for pair in n.value for child in pair]
        elif isinstance(n, yaml.SequenceNode):
            children = list(n.value)
        else:
            children = []
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_YAML_NODES:
                raise FrontMatterError(f"more than {MAX_YAML_NODES} values once aliases are expanded")
        active.discard(id(n))
        sizes[id(n)] = total
        return total

    return size(node)


def load_front_matter(text: str) -> Any:
    """Parse a README's YAML front matter with bounded cost: safe tags only, bounded depth and expanded size."""
    import yaml

    # PyYAML's scanner looks ahead through a whole run of open brackets at a cost quadratic in its length
    # (8 KB of "[" took a second) before the depth check above can see it: count them first.
    depth = 0
    for bracket in re.finditer(r"[\[\]{}]", text):
        depth = depth + 1 if bracket[0] in "[{" else max(depth - 1, 0)
        if depth > MAX_YAML_DEPTH:
            raise FrontMatterError(f"brackets nested deeper than {MAX_YAML_DEPTH} levels")
    loader = _bounded_loader()(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node)
        return loader.construct_document(node)
    except (yaml.YAMLError, ValueError, RecursionError) as exc:  # ValueError: an integer of too many digits
        raise FrontMatterError(str(exc)[:300]) from None
    finally:
        loader.dispose()
