"""TaskPulse's test node for a real ComfyUI without model weights: passes an image through
after sleeping `steps` times `step_ms`, reporting each step through ComfyUI's own progress
hook (comfy.utils.ProgressBar), as a sampler does. Interrupts are honoured between steps.
Copied into ComfyUI's custom_nodes/ by `cargo xtask test-comfyui`."""

import time

import comfy.model_management
import comfy.utils


class TaskPulseSteps:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE",),
                "steps": ("INT", {"default": 5, "min": 1, "max": 10000}),
                "step_ms": ("INT", {"default": 200, "min": 0, "max": 60000}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, image, steps, step_ms, seed):
        bar = comfy.utils.ProgressBar(steps)
        for _ in range(steps):
            comfy.model_management.throw_exception_if_processing_interrupted()
            time.sleep(step_ms / 1000.0)
            bar.update(1)
        return (image,)


NODE_CLASS_MAPPINGS = {"TaskPulseSteps": TaskPulseSteps}
NODE_DISPLAY_NAME_MAPPINGS = {"TaskPulseSteps": "TaskPulse steps (test)"}
