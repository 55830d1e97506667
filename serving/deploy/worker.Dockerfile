# The worker image: a Celery worker or a KubernetesExecutor task pod, with both environments the tasks use:
# Airflow's (runs the task; no torch) and the ML one (the `invoice` CLI the ML tasks call). Build from the
# repository root: `make worker-image` (= docker build -f serving/deploy/worker.Dockerfile -t invoice-mlops-worker .).
FROM python:3.11-slim
WORKDIR /opt/invoice-mlops
RUN pip install --no-cache-dir uv==0.13.9
COPY pyproject.toml README.md ./
COPY training/ training/
RUN uv venv .venvs/airflow && VIRTUAL_ENV=.venvs/airflow uv pip sync training/locks/airflow.txt \
 && VIRTUAL_ENV=.venvs/airflow uv pip install --no-deps -e . \
 && uv venv .venvs/ml && VIRTUAL_ENV=.venvs/ml uv pip sync training/locks/ml.txt \
      --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple --index-strategy unsafe-best-match \
 && VIRTUAL_ENV=.venvs/ml uv pip install --no-deps -e .
COPY dags/ dags/
COPY serving/ serving/
COPY params.yaml dvc.yaml data.dvc ./
ENV PATH=/opt/invoice-mlops/.venvs/airflow/bin:$PATH \
    INVOICE_PROJECT_ROOT=/opt/invoice-mlops \
    INVOICE_ML_BIN=/opt/invoice-mlops/.venvs/ml/bin \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/invoice-mlops/dags
CMD ["airflow", "celery", "worker", "--queues", "default,ml"]
