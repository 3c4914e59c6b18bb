"""Precision and weight quantization become two settings (issue 12).

``dtype`` used to mix precisions (auto, float16, bfloat16, float32) with weight widths (fp8,
int8, int4) that were only used for sizing. Rows with a width move it to ``quantization``, as
the vLLM method that loads such a checkpoint: fp8 -> fp8; int4 -> awq or gptq when the model
id names one, else bitsandbytes (vLLM quantizes a 16-bit checkpoint to 4 bits as it loads it);
int8 -> gptq when the model id names it, compressed-tensors for a W8A8 checkpoint, else fp8
(8-bit weights of any 16-bit checkpoint). ``engine_args.dtype`` and ``engine_args.quantization``
(no longer engine arguments) move to the two fields. Sizing estimates stay the same: each
method counts the bytes the old width did.
"""

from django.db import migrations, models

_DTYPE_ALIASES = {"half": "float16", "float": "float32"}


def _quantization_for(width: str, model_id: str) -> str:
    name = model_id.lower()
    if width == "fp8":
        return "fp8"
    if width == "int4":
        for method in ("awq", "gptq"):
            if method in name:
                return method
        return "bitsandbytes"
    if "gptq" in name:
        return "gptq"
    if "w8a8" in name:
        return "compressed-tensors"
    return "fp8"


def split_precision(apps, schema_editor):  # type: ignore[no-untyped-def]
    LlmModel = apps.get_model("llm_models", "LlmModel")
    for model in LlmModel.objects.all().iterator():
        args = dict(model.engine_args or {})
        dtype, quantization = model.dtype, ""
        if dtype in ("fp8", "int8", "int4"):
            quantization = _quantization_for(dtype, model.model_id)
            dtype = "auto"
        if "dtype" in args:
            dtype = _DTYPE_ALIASES.get(str(args["dtype"]), str(args.pop("dtype")))
            args.pop("dtype", None)
        if "quantization" in args:
            quantization = str(args.pop("quantization"))
        LlmModel.objects.filter(id=model.id).update(
            dtype=dtype, quantization=quantization, engine_args=args
        )


class Migration(migrations.Migration):
    dependencies = [("llm_models", "0003_scaling_policy")]

    operations = [
        migrations.AddField(
            model_name="llmmodel",
            name="quantization",
            field=models.CharField(
                blank=True,
                choices=[
                    ("", "none (or the checkpoint's own)"),
                    ("aqlm", "aqlm"),
                    ("auto-round", "auto-round"),
                    ("awq", "awq"),
                    ("awq_marlin", "awq_marlin"),
                    ("bitblas", "bitblas"),
                    ("bitsandbytes", "bitsandbytes"),
                    ("bitsandbytes-fp4", "bitsandbytes-fp4"),
                    ("bitsandbytes-nf4", "bitsandbytes-nf4"),
                    ("compressed-tensors", "compressed-tensors"),
                    ("deepspeedfp", "deepspeedfp"),
                    ("eetq", "eetq"),
                    ("exl2", "exl2"),
                    ("experts_int8", "experts_int8"),
                    ("fbgemm_fp8", "fbgemm_fp8"),
                    ("fp8", "fp8"),
                    ("gguf", "gguf"),
                    ("gptq", "gptq"),
                    ("gptq_bitblas", "gptq_bitblas"),
                    ("gptq_marlin", "gptq_marlin"),
                    ("gptq_marlin_24", "gptq_marlin_24"),
                    ("hqq", "hqq"),
                    ("marlin", "marlin"),
                    ("modelopt", "modelopt"),
                    ("modelopt_fp4", "modelopt_fp4"),
                    ("moe_wna16", "moe_wna16"),
                    ("ptpc_fp8", "ptpc_fp8"),
                    ("qqq", "qqq"),
                    ("quark", "quark"),
                    ("torchao", "torchao"),
                ],
                default="",
                max_length=32,
            ),
        ),
        migrations.RunPython(split_precision, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="llmmodel",
            name="dtype",
            field=models.CharField(
                choices=[
                    ("auto", "auto"),
                    ("float16", "float16"),
                    ("bfloat16", "bfloat16"),
                    ("float32", "float32"),
                ],
                default="auto",
                max_length=16,
            ),
        ),
    ]
