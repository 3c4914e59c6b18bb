FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY requirements/ requirements/
RUN pip install uv==0.13.9 && uv pip install --system -r requirements/base.txt -r requirements/agent.txt
COPY . .
RUN INVENTIV_STATE_DIR=/tmp/state python manage.py collectstatic --noinput
USER nobody
