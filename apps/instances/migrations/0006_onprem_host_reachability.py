# On-premise hosts behind NAT (issue 12): how the gateways reach a host, and the dial-back probe.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("instances", "0005_instance_agent_version"),
    ]

    operations = [
        migrations.AddField(
            model_name="onpremhost",
            name="dialable",
            field=models.BooleanField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="onpremhost",
            name="probed_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="onpremhost",
            name="reachability",
            field=models.CharField(
                choices=[("auto", "Automatic"), ("direct", "Direct"), ("tunnel", "Tunnel")],
                default="auto",
                max_length=8,
            ),
        ),
        migrations.AddConstraint(
            model_name="onpremhost",
            constraint=models.CheckConstraint(
                condition=models.Q(("reachability__in", ["auto", "direct", "tunnel"])),
                name="onpremhost_reachability_valid",
            ),
        ),
    ]
