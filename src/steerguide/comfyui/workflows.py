"""The example workflows' UI format (what ComfyUI's editor loads) derived from their API format.

ComfyUI has two workflow formats: the API format `/prompt` takes (node id → class_type and inputs) and
the editor's graph (nodes with positions, typed input/output slots, links, and widget values in the order
of the node's INPUT_TYPES). examples/comfyui keeps both; the UI files are written from the API files by

    python -m steerguide.comfyui.workflows COMFYUI_DIR examples/comfyui/*.api.json

(ComfyUI's node classes give the slot types and widget order), and a test checks they still agree.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMN_WIDTH, ROW_HEIGHT = 340, 200


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


def _depths(api: dict) -> dict[str, int]:
    """Each node's column: one more than the deepest node feeding it."""
    depth: dict[str, int] = {}

    def of(node_id: str) -> int:
        if node_id not in depth:
            sources = [v[0] for v in api[node_id]["inputs"].values() if _is_link(v)]
            depth[node_id] = 1 + max((of(s) for s in sources), default=-1)
        return depth[node_id]

    for node_id in api:
        of(node_id)
    return depth


def api_to_ui(api: dict, node_classes: dict) -> dict:
    """The editor's graph for an API-format workflow, laid out left to right by dependency depth."""
    depth = _depths(api)
    rows: dict[int, int] = {}
    links: list[list] = []
    nodes: dict[str, dict] = {}
    for order, node_id in enumerate(sorted(api, key=lambda k: (depth[k], int(k)))):
        spec = api[node_id]
        cls = node_classes[spec["class_type"]]
        names = getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)
        declared = cls.INPUT_TYPES()
        inputs, widgets = [], []
        for section in ("required", "optional"):
            for name, (kind, *options) in declared.get(section, {}).items():
                if name not in spec["inputs"]:
                    continue
                value = spec["inputs"][name]
                if _is_link(value):
                    inputs.append({"name": name, "type": kind if isinstance(kind, str) else "COMBO",
                                   "link": None, "_from": value})
                else:
                    widgets.append(value)
                    if options and options[0].get("control_after_generate"):
                        widgets.append("fixed")
        row = rows.get(depth[node_id], 0)
        rows[depth[node_id]] = row + 1
        nodes[node_id] = {
            "id": int(node_id), "type": spec["class_type"],
            "pos": [40 + COLUMN_WIDTH * depth[node_id], 40 + ROW_HEIGHT * row], "size": [300, 130],
            "flags": {}, "order": order, "mode": 0, "inputs": inputs,
            "outputs": [{"name": name, "type": kind, "links": [], "slot_index": i}
                        for i, (kind, name) in enumerate(zip(cls.RETURN_TYPES, names, strict=True))],
            "properties": {"Node name for S&R": spec["class_type"]}, "widgets_values": widgets,
        }
        if "_meta" in spec and "title" in spec["_meta"]:
            nodes[node_id]["title"] = spec["_meta"]["title"]
    for node_id in sorted(nodes, key=int):
        for slot in nodes[node_id]["inputs"]:
            source, index = slot.pop("_from")
            link_id = len(links) + 1
            slot["link"] = link_id
            nodes[source]["outputs"][index]["links"].append(link_id)
            links.append([link_id, int(source), index, int(node_id),
                          nodes[node_id]["inputs"].index(slot), slot["type"]])
    return {"last_node_id": max(int(k) for k in api), "last_link_id": len(links),
            "nodes": [nodes[k] for k in sorted(nodes, key=int)], "links": links, "groups": [],
            "config": {}, "extra": {}, "version": 0.4}


def node_classes() -> dict:
    """ComfyUI's built-in and custom-sampler node classes, and ours (ComfyUI imported)."""
    import comfy_extras.nodes_custom_sampler
    import nodes

    import steerguide.comfyui.nodes as ours

    return {**nodes.NODE_CLASS_MAPPINGS, **comfy_extras.nodes_custom_sampler.NODE_CLASS_MAPPINGS,
            **ours.NODE_CLASS_MAPPINGS}


def main(argv: list[str]) -> None:
    from steerguide.comfyui.harness import use_comfyui

    use_comfyui(argv[0])
    classes = node_classes()
    for name in argv[1:]:
        path = Path(name)
        ui = api_to_ui(json.loads(path.read_text()), classes)
        out = path.with_name(path.name.replace(".api.json", ".ui.json"))
        out.write_text(json.dumps(ui, indent=1) + "\n")
        print(out)


if __name__ == "__main__":
    main(sys.argv[1:])
