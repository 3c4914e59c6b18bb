# Scale to zero by power-off (issue 9): the powering_off and powered_off statuses.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("instances", "0007_instance_tls_fingerprint"),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name="instance",
            name="instance_status_valid",
        ),
        migrations.AlterField(
            model_name="instance",
            name="status",
            field=models.CharField(
                choices=[
                    ("provisioning", "Provisioning"),
                    ("booting", "Booting"),
                    ("starting", "Starting"),
                    ("ready", "Ready"),
                    ("unavailable", "Unavailable"),
                    ("draining", "Draining"),
                    ("powering_off", "Powering off"),
                    ("powered_off", "Powered off"),
                    ("terminating", "Terminating"),
                    ("terminated", "Terminated"),
                    ("provisioning_failed", "Provisioning failed"),
                    ("startup_failed", "Startup failed"),
                ],
                default="provisioning",
                max_length=24,
            ),
        ),
        migrations.AddConstraint(
            model_name="instance",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    (
                        "status__in",
                        [
                            "provisioning",
                            "booting",
                            "starting",
                            "ready",
                            "unavailable",
                            "draining",
                            "powering_off",
                            "powered_off",
                            "terminating",
                            "terminated",
                            "provisioning_failed",
                            "startup_failed",
                        ],
                    )
                ),
                name="instance_status_valid",
            ),
        ),
    ]
