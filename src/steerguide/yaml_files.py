"""Reading the YAML files users write (sweep configs, presets, subjects files): PyYAML's safe loader,
except that a key given twice in one mapping is an error, not the last value silently winning."""

from __future__ import annotations

import yaml


class DuplicateKey(yaml.YAMLError):
    """A key given twice in one mapping; `problem` and `problem_mark` as PyYAML's own errors have them."""

    def __init__(self, key, first: yaml.Mark, again: yaml.Mark):
        self.problem = f"key {key!r} is given twice (lines {first.line + 1} and {again.line + 1})"
        self.problem_mark = again
        super().__init__(self.problem)


class _UniqueKeyLoader(yaml.SafeLoader):
    pass


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may repeat; merged by PyYAML
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.setdefault(key, key_node.start_mark)
        except TypeError:  # an unhashable key: PyYAML's own error follows
            continue
        if first is not key_node.start_mark:
            raise DuplicateKey(key, first, key_node.start_mark)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def safe_load(text: str):
    """`yaml.safe_load`, refusing a duplicate key with `DuplicateKey` (a `yaml.YAMLError`)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
