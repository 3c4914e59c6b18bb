FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY requirements/ requirements/
RUN pip install uv==0.13.9 && uv pip install --system -r requirements/base.txt -r requirements/agent.txt
COPY . .
RUN state=$(mktemp -d) && INVENTIV_STATE_DIR=$state python manage.py collectstatic --noinput && rm -rf "$state"
# The state directory (local-provider records, beat's schedule; the embedded database when run
# without DATABASE_URL), owned by the user the image runs as, 0700. compose.yaml mounts a named
# volume here, which Docker initializes with this owner and mode.
RUN mkdir -p /var/lib/inventiv && chown nobody:nogroup /var/lib/inventiv && chmod 0700 /var/lib/inventiv
ENV INVENTIV_STATE_DIR=/var/lib/inventiv
VOLUME /var/lib/inventiv
USER nobody
