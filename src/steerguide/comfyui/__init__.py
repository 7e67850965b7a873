"""steerguide's nodes for ComfyUI: PG and AG guiders for SamplerCustomAdvanced, one batched pass a step.

`steerguide comfyui install COMFYUI_DIR` puts a `custom_nodes/steerguide` entry into a ComfyUI folder;
ComfyUI then imports `steerguide.comfyui.nodes` (its NODE_CLASS_MAPPINGS). Everything below this package
except `install` imports ComfyUI's own modules, so it runs inside a ComfyUI process (or `harness`).
See docs/comfyui.md.
"""
