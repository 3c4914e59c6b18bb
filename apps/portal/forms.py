"""The portal's forms: each validates what it can in words, then the service validates the
rest (its refusal lands on the field it names, ``context.form_errors``)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.validators import RegexValidator

from apps.accounts.choices import Role
from apps.models.choices import QUANTIZATION_CHOICES, Dtype, Engine, ScaleToZeroMode
from apps.models.services import MAX_REPLICAS
from apps.portal.estimates import CATALOG

MAX_GPUS = 16
LIMIT = 2**31 - 1

name_validator = RegexValidator(
    r"^[a-z0-9][a-z0-9-]{0,62}$",
    "Use lower-case letters, digits and dashes (up to 64), starting with a letter or digit.",
)


class ModelCodeForm(forms.Form):
    """The wizard: which model, on what hardware, placed where, scaled how."""

    name = forms.CharField(
        label="Model code name",
        max_length=64,
        validators=[name_validator],
        help_text='The name clients put in "model": e.g. support-bot.',
    )
    catalog = forms.ChoiceField(
        label="Model",
        required=False,
        choices=[("", "Another model (type its id below)")]
        + [(m.key, f"{m.label} ({m.parameter_count_b}B)") for m in CATALOG],
    )
    model_id = forms.CharField(
        label="Model id",
        max_length=255,
        required=False,
        help_text="A Hugging Face id, e.g. meta-llama/Llama-3.1-8B-Instruct.",
    )
    engine = forms.ChoiceField(
        choices=[
            (Engine.VLLM.value, "vLLM (GPU machines)"),
            (Engine.TGI.value, "TGI, text-generation-inference (GPU machines)"),
            (Engine.MOCK.value, "Mock engine (no GPU: for trying things out)"),
        ],
        initial=Engine.VLLM.value,
    )
    gpu_count = forms.IntegerField(label="GPUs", min_value=0, max_value=MAX_GPUS, initial=1)
    vram_per_gpu_gb = forms.IntegerField(
        label="VRAM per GPU (GB)",
        min_value=1,
        max_value=1024,
        required=False,
        help_text="Leave empty to estimate it from the parameter count.",
    )
    parameter_count_b = forms.DecimalField(
        label="Parameters (billions)",
        min_value=0.01,
        max_value=10000,
        decimal_places=2,
        required=False,
    )
    dtype = forms.ChoiceField(label="Precision", choices=Dtype.choices, initial=Dtype.AUTO.value)
    quantization = forms.ChoiceField(choices=QUANTIZATION_CHOICES, required=False)
    max_model_len = forms.IntegerField(
        label="Context length (tokens)", min_value=256, max_value=2_000_000, required=False
    )
    offer = forms.CharField(required=False, widget=forms.HiddenInput)
    min_replicas = forms.IntegerField(min_value=0, max_value=MAX_REPLICAS, initial=1)
    max_replicas = forms.IntegerField(min_value=1, max_value=MAX_REPLICAS, initial=1)
    target_load_per_replica = forms.IntegerField(
        label="Requests in flight per replica (scale-up target)",
        min_value=1,
        max_value=10_000,
        initial=8,
    )
    idle_to_zero_s = forms.IntegerField(
        label="Idle seconds before scaling to zero (when the minimum is 0)",
        min_value=0,
        max_value=7 * 86400,
        initial=900,
    )
    scale_to_zero_mode = forms.ChoiceField(
        label="At zero",
        choices=[
            (ScaleToZeroMode.TERMINATE.value, "Terminate the machines (nothing is billed)"),
            (
                ScaleToZeroMode.POWER_OFF.value,
                "Power them off (their disk is billed; the next start is faster)",
            ),
        ],
        initial=ScaleToZeroMode.TERMINATE.value,
        required=False,  # a script's POST without it: terminate, the model codes' default
    )
    ttft_p95_bound_ms = forms.IntegerField(
        label="Time to first token, p95 bound (ms)",
        min_value=1,
        max_value=600_000,
        required=False,
        help_text="Scale up when the gateways measure more. Empty: no latency signal.",
    )

    def clean_scale_to_zero_mode(self) -> str:
        # A script's POST without it: terminate, the model codes' default.
        return self.cleaned_data.get("scale_to_zero_mode") or ScaleToZeroMode.TERMINATE.value

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        item = next((m for m in CATALOG if m.key == data.get("catalog")), None)
        if item is not None:
            data["model_id"] = data.get("model_id") or item.model_id
            if not data.get("parameter_count_b") and not data.get("vram_per_gpu_gb"):
                data["parameter_count_b"] = item.parameter_count_b
            data["max_model_len"] = data.get("max_model_len") or item.max_model_len
        if not data.get("model_id"):
            self.add_error("model_id", "Pick a model from the list or type its id.")
        low, high = data.get("min_replicas"), data.get("max_replicas")
        if low is not None and high is not None and low > high:
            self.add_error("max_replicas", "The maximum must be at least the minimum.")
        return data

    def model_values(self) -> dict[str, Any]:
        """The model code's fields, for ``model_create`` (and the offers estimate)."""
        data = self.cleaned_data
        values: dict[str, Any] = {
            "engine": data["engine"],
            "model_id": data["model_id"],
            "gpu_count": data["gpu_count"],
            "dtype": data["dtype"],
            "quantization": data.get("quantization") or "",
        }
        for name in ("vram_per_gpu_gb", "parameter_count_b", "max_model_len"):
            if data.get(name):
                values[name] = data[name]
        return values

    def policy_values(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {
            name: data[name]
            for name in (
                "min_replicas",
                "max_replicas",
                "target_load_per_replica",
                "idle_to_zero_s",
                "scale_to_zero_mode",
                "ttft_p95_bound_ms",
            )
        }


class ReplicasForm(forms.Form):
    replicas = forms.IntegerField(min_value=0, max_value=MAX_REPLICAS)


def _limit(label: str) -> forms.IntegerField:
    return forms.IntegerField(
        label=label, min_value=1, max_value=LIMIT, required=False, help_text="Empty: no limit."
    )


class KeyLimitsForm(forms.Form):
    rpm_limit = _limit("Requests per minute")
    tpm_limit = _limit("Tokens per minute")
    concurrency_limit = _limit("Requests at once")


class KeyCreateForm(KeyLimitsForm):
    field_order = ["name", "model_codes", "expires_on"]
    name = forms.CharField(max_length=100, help_text="What the key is for, e.g. staging.")
    model_codes = forms.MultipleChoiceField(
        label="Allowed model codes",
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None checked: every model code of the organization.",
    )
    expires_on = forms.DateField(
        label="Expires on (UTC)",
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="Empty: never expires.",
    )

    def __init__(self, *args: Any, model_codes: list[tuple[int, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["model_codes"]
        assert isinstance(field, forms.MultipleChoiceField)
        field.choices = [(str(pk), name) for pk, name in model_codes]


class BudgetForm(forms.Form):
    api_key = forms.ChoiceField(label="Applies to", required=False)
    currency = forms.CharField(
        max_length=3,
        initial="EUR",
        validators=[RegexValidator(r"^[A-Z]{3}$", "Three capital letters, e.g. EUR.")],
    )
    monthly_limit = forms.DecimalField(
        label="Monthly limit", min_value=0, max_digits=14, decimal_places=6
    )
    warn_at_percent = forms.IntegerField(
        label="Warn at (% of the limit)", min_value=1, max_value=100, initial=80
    )

    def __init__(self, *args: Any, keys: list[tuple[int, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["api_key"]
        assert isinstance(field, forms.ChoiceField)
        field.choices = [("", "The whole organization")] + [
            (str(pk), f"Key {name}") for pk, name in keys
        ]


class InvitationForm(forms.Form):
    email = forms.EmailField(label="E-mail address")
    role = forms.ChoiceField(choices=Role.choices, initial=Role.MEMBER.value)


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


class OrganizationForm(forms.Form):
    name = forms.CharField(label="Organization name", max_length=150)
