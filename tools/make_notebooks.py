"""Write the notebooks in notebooks/ from the cell sources below (run: python tools/make_notebooks.py).

Keeping the source here makes notebook changes reviewable as plain Python; the .ipynb files are committed
without outputs. Every notebook starts with its title, then the install cell below, then its own cells.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

# Installs the project in a workbench (OpenShift AI), pinned; does nothing where the project is already importable (the
# project's own .venv, and so the tests that execute the notebooks).
INSTALL_CELL = (
    "# Install the project, pinned to one release: your Git URL at a tag or commit, or a wheel built with\n"
    "# `pip wheel --no-deps -w dist .` and uploaded next to this notebook. Skipped where the project is importable.\n"
    "import importlib.util\nimport re\nimport subprocess\nimport sys\n\n"
    "project = 'git+https://github.com/your-org/model-pipelines.git@TAG-OR-COMMIT'  # or 'model_pipelines-0.1.0-py3-none-any.whl'\n"
    "if importlib.util.find_spec('pipelines') and importlib.util.find_spec('components'):\n"
    "    print('model-pipelines is importable: nothing to install')\n"
    "elif 'your-org' in project or 'TAG-OR-COMMIT' in project:\n"
    "    raise RuntimeError('set project in this cell to your Git URL at a tag or commit, or to a wheel file, then run it again')\n"
    "else:\n"
    "    shown = re.sub(r'//[^/@]*@', '//', project)  # a token in the URL never reaches the saved output\n"
    "    result = subprocess.run([sys.executable, '-m', 'pip', 'install', '--quiet', project], capture_output=True, text=True)\n"
    "    if result.returncode != 0:\n"
    "        raise RuntimeError(f'pip install {shown} failed:\\n' + (result.stdout + result.stderr).replace(project, shown))\n"
    "    importlib.invalidate_caches()\n"
    "    print('installed', shown, '(if an import below fails, restart the kernel and run again)')"
)

NOTEBOOKS = {
    "01-train-and-evaluate.ipynb": [
        new_markdown_cell(
            "# 01 · Train and evaluate locally\n\n"
            "The same step functions the pipeline runs, called directly: ingest synthetic cluster metrics, train both models, "
            "and look at the metrics the Data Science Pipelines dashboard shows (the evaluation report, the ROC curve, the "
            "confusion matrix)."
        ),
        new_code_cell(
            "import io\n\nimport joblib\nimport matplotlib.pyplot as plt\nfrom IPython.display import Markdown, display\n\n"
            "from components.model.evaluate import evaluate_candidate, markdown_report\n"
            "from components.data.ingest import IngestRequest, ingest\n"
            "from components.model.spec import spec_for\n"
            "from components.model.train import train_model"
        ),
        new_code_cell("days, seed = 10.0, 42  # parameters", metadata={"tags": ["parameters"]}),
        new_code_cell(
            "detector_spec = spec_for('anomaly-detector')  # models/anomaly-detector.yaml: what the model reads, how it is trained and judged\n"
            "detector_data = ingest(IngestRequest(detector_spec.name, days=days, seed=seed))\n"
            "print(detector_data.description)\n"
            "detector = train_model(detector_spec, detector_data.train)\n"
            "buffer = io.BytesIO(); joblib.dump(detector.estimator, buffer)\n"
            "evaluation = evaluate_candidate(detector_spec, buffer.getvalue(), detector_data.validation)\n"
            "display(Markdown(markdown_report(evaluation, detector_data.description)))"
        ),
        new_code_cell(
            "fpr, tpr, _ = evaluation.roc\n"
            "figure, (roc, matrix) = plt.subplots(1, 2, figsize=(10, 4))\n"
            "roc.plot(fpr, tpr); roc.plot([0, 1], [0, 1], '--', color='grey')\n"
            "roc.set(title=f\"ROC (AUC {evaluation.metrics['roc_auc']:.3f})\", xlabel='false positive rate', ylabel='true positive rate')\n"
            "matrix.imshow(evaluation.confusion, cmap='Blues')\n"
            "for (row, column), count in [((r, c), evaluation.confusion[r][c]) for r in range(2) for c in range(2)]:\n"
            "    matrix.text(column, row, count, ha='center', va='center')\n"
            "matrix.set(title='confusion matrix', xticks=[0, 1], yticks=[0, 1], xticklabels=evaluation.categories, yticklabels=evaluation.categories)\n"
            "plt.show()\n"
            "assert evaluation.deploy, evaluation.reason"
        ),
        new_code_cell(
            "forecaster_spec = spec_for('predictive-analytics')\n"
            "forecaster_data = ingest(IngestRequest(forecaster_spec.name, days=days, seed=seed))\n"
            "training = {'horizon_minutes': 60}  # a run's overrides of the spec's training knobs and estimator parameters\n"
            "forecaster = train_model(forecaster_spec, forecaster_data.train, training)\n"
            "buffer = io.BytesIO(); joblib.dump(forecaster.estimator, buffer)\n"
            "forecast = evaluate_candidate(forecaster_spec, buffer.getvalue(), forecaster_data.validation, training=training)\n"
            "display(Markdown(markdown_report(forecast, forecaster_data.description)))\n"
            "assert forecast.metrics['mase_mean'] < 1.0, 'the forecaster must beat persistence'"
        ),
    ],
    "02-run-the-pipeline-locally.ipynb": [
        new_markdown_cell(
            "# 02 · Run the whole pipeline locally and query the served model\n\n"
            "`kfp.local` runs the compiled DAG on this machine: ingest → train → evaluate → save → deploy → smoke-test → canary. "
            "The model ends up served by the real KServe model server on 127.0.0.1."
        ),
        new_code_cell(
            "import os\nfrom pathlib import Path\n\nimport requests\n\n"
            "from components.model.contract import fallback_instance\nfrom pipelines.local import local_defaults, local_target, parse_params, run_local"
        ),
        new_code_cell(
            "state_dir = Path(os.environ.get('NOTEBOOK_STATE_DIR', '.model-pipelines-notebook'))  # parameters\n"
            "canary_interval_s = float(os.environ.get('NOTEBOOK_CANARY_INTERVAL_S', '5'))",
            metadata={"tags": ["parameters"]},
        ),
        new_code_cell(
            "# local_defaults: serve on this machine and learn synthetic data (a cluster run's defaults read Prometheus)\n"
            "arguments = parse_params([*local_defaults('anomaly-detector'), f'canary.interval_s={canary_interval_s}'], 'anomaly-detector')\n"
            "summary = run_local('anomaly-detector', arguments, state_dir)\n"
            "assert summary.succeeded, summary.error\n"
            "print(summary.outcome)\nprint(summary.report)\nprint(summary.serving)"
        ),
        new_code_cell(
            "answer = requests.post(f'{summary.serving.url}:predict', json={'instances': [fallback_instance()]}, timeout=10)\n"
            "print(answer.status_code, answer.json())\n"
            "assert answer.json()['predictions'] == [1]"
        ),
        new_code_cell("print('stopped:', local_target(state_dir).stop_all())"),
    ],
    "03-upload-submit-schedule.ipynb": [
        new_markdown_cell(
            "# 03 · Upload, run and schedule on a cluster\n\n"
            "Uses `kfp.Client` against the Data Science Pipelines route. Set the parameters (or `KF_PIPELINES_ENDPOINT` and "
            "`KF_PIPELINES_TOKEN`); the token is never printed."
        ),
        new_code_cell(
            "import os\n\n"
            "host = os.environ.get('KF_PIPELINES_ENDPOINT', 'https://ds-pipeline-dspa-self-healing-platform.apps.example.com')  # parameters\n"
            "token = os.environ.get('KF_PIPELINES_TOKEN')  # from `oc whoami -t`\n"
            "ca_cert = os.environ.get('KF_PIPELINES_CA_CERT')\n"
            "platform = 'rhoai-2.25'  # your OpenShift AI release, rhoai-2.16 ... rhoai-3.5 (upstream KFP: kfp-2.2 ... kfp-2.16)\n"
            "store = 'pvc'  # model store, pvc or s3; before OpenShift AI 3.0 it is fixed when the pipelines are compiled",
            metadata={"tags": ["parameters"]},
        ),
        new_code_cell(
            "import tempfile\nfrom pathlib import Path\n\n"
            "from pipelines import kfp_remote\nfrom pipelines.catalog import PIPELINE_FILES\nfrom pipelines.platforms import platform_named, profile_folder\n"
            "from pipelines.retrain import compile_pipelines\n\n"
            "connection = kfp_remote.resolve_connection(host, token, ca_cert, None)\n"
            "client = kfp_remote.connect(connection)\n"
            "compiled = Path(tempfile.mkdtemp())\ncompile_pipelines(compiled, platform=platform, store=store)\n"
            "print(f'compiled for {platform} with the {store} store (as compiled/{profile_folder(platform_named(platform), store)}/)')\n"
            "for key, file in PIPELINE_FILES.items():\n"
            "    print(kfp_remote.upload(client, compiled / file, file.removesuffix('.yaml')))"
        ),
        new_code_cell(
            "run = kfp_remote.submit(client, 'anomaly-detector-retrain', {'days': 14.0}, 'notebook', connection.host)\n"
            "print('run', run.run_id)"
        ),
        new_code_cell(
            "schedule = kfp_remote.create_schedule(client, 'anomaly-detector-retrain', 'weekly-anomaly-detector', '0 0 2 * * 0', {},\n"
            "                                      'scheduled', connection.host)\n"
            "for item in kfp_remote.list_schedules(client):\n"
            "    print(item.display_name, item.status, item.trigger.cron_schedule.cron)"
        ),
    ],
    "04-register-roll-out-approve.ipynb": [
        new_markdown_cell(
            "# 04 · Register a model, roll it out from the Model Registry, approve it\n\n"
            "Trains the anomaly detector here, saves each version to the model store and registers it in the OpenShift AI Model "
            "Registry, rolls it out on this machine by its `model-registry://` URI (checked against the store's checksum), and "
            "holds the second version's canary for approval (`canary.approval=before-promote`) until the version's custom property "
            "`approved` says true, as set in the dashboard or with `model-pipelines approve`. Set `MODEL_REGISTRY_URL` (the registry's "
            "REST route), `MODEL_REGISTRY_TOKEN` (e.g. `oc whoami -t`) and, for a private CA, `MODEL_REGISTRY_CA_BUNDLE` as environment "
            "variables of the workbench; the token is never printed or saved in the notebook."
        ),
        new_code_cell(
            "import os\nimport subprocess\nimport sys\nimport tempfile\nimport time\nfrom pathlib import Path\n\n"
            "from components.data.ingest import IngestRequest, ingest\n"
            "from components.kfp.workflow import StoreOptions, save_step\n"
            "from components.model.evaluate import evaluate_candidate\n"
            "from components.model.spec import spec_for\n"
            "from components.model.train import save_trained, train_model\n"
            "from components.registry.client import RegistryClient, plain_values\n"
            "from components.registry.sync import registered_properties, sync_model\n"
            "from components.store.filesystem import MODEL_FILENAME, FilesystemStore"
        ),
        new_code_cell(
            "state_dir = Path(os.environ.get('NOTEBOOK_STATE_DIR', '.model-pipelines-notebook-04'))  # parameters\n"
            "canary_interval_s = float(os.environ.get('NOTEBOOK_CANARY_INTERVAL_S', '5'))\n"
            "approval_timeout_h = float(os.environ.get('NOTEBOOK_APPROVAL_TIMEOUT_H', '1'))  # unapproved for this long: rolled back\n"
            "registry_url = os.environ.get('MODEL_REGISTRY_URL', 'https://model-registry-rest.apps.example.com')\n"
            "registry_ca_bundle = os.environ.get('MODEL_REGISTRY_CA_BUNDLE', '')  # empty: the system's CAs\n"
            "model_name, days = 'anomaly-detector', 3.0",
            metadata={"tags": ["parameters"]},
        ),
        new_code_cell(
            "client = RegistryClient(registry_url, registry_ca_bundle)  # the token from $MODEL_REGISTRY_TOKEN (or the service account)\n"
            "spec = spec_for(model_name)\n"
            "store = FilesystemStore(state_dir / 'store')\n"
            "os.environ['MODEL_STORE_ROOT'] = str(store.root)  # save_step stores where the rollouts below read\n"
            "registry = ['--param', f'store.registry_url={registry_url}', '--param', f'store.registry_ca_bundle={registry_ca_bundle}']\n\n\n"
            "def train_save_register(seed: int) -> str:\n"
            "    \"\"\"Train on a window of synthetic metrics, evaluate, save to the store, register in the registry; return the version.\"\"\"\n"
            "    data = ingest(IngestRequest(model_name, days=days, seed=seed))\n"
            "    directory = Path(tempfile.mkdtemp())\n"
            "    save_trained(train_model(spec, data.train), directory, data_source='synthetic')\n"
            "    evaluation = evaluate_candidate(spec, (directory / MODEL_FILENAME).read_bytes(), data.validation)\n"
            "    stored = save_step(model_name, str(directory), evaluation.metrics, StoreOptions(), run_name='notebook-04')\n"
            "    print(f'saved {stored.version} -> {stored.storage_uri}')\n"
            "    print('registry:', sync_model(store, client, model_name, spec.description, spec.owner).message())\n"
            "    return stored.version\n\n\n"
            "def model_pipelines(*arguments: str, wait: bool = True) -> subprocess.Popen | None:\n"
            "    \"\"\"Run the model-pipelines command line (this kernel's Python) and print what it says; with ``wait=False`` return it running.\"\"\"\n"
            "    command = [sys.executable, '-m', 'pipelines.cli', *arguments, '--state-dir', str(state_dir)]\n"
            "    if not wait:\n"
            "        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)\n"
            "    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)\n"
            "    print(result.stdout)\n"
            "    assert result.returncode == 0, 'the command failed: see its output above'\n"
            "    return None"
        ),
        new_markdown_cell("The first version, registered and rolled out from the registry: with nothing served yet it becomes stable at once."),
        new_code_cell(
            "first = train_save_register(seed=1)\n"
            "model_pipelines('rollout', model_name, '--local', '--version', f'model-registry://{model_name}/{first}',\n"
            "                '--param', f'canary_interval_s={canary_interval_s}', *registry)"
        ),
        new_markdown_cell(
            "The next version, trained on another window, rolled out with the approval gate. Its canary holds at the last step below "
            "100 % and marks the version `approved=awaiting` in the registry. Approve it in the dashboard (the version's properties: "
            "set `approved` to `true`), or with the verb as the next cell does; `false` rolls it back."
        ),
        new_code_cell(
            "second = train_save_register(seed=2)\n"
            "rollout = model_pipelines('rollout', model_name, '--local', '--version', f'model-registry://{model_name}/{second}',\n"
            "                          '--param', f'canary_interval_s={canary_interval_s}', '--param', 'approval=before-promote',\n"
            "                          '--param', f'approval_timeout_h={approval_timeout_h}', '--param', 'approval_poll_s=1', *registry, wait=False)\n"
            "while registered_properties(client, model_name, second).get('approved') != 'awaiting':\n"
            "    assert rollout.poll() is None, 'the rollout ended without holding for approval:\\n' + rollout.stdout.read()\n"
            "    time.sleep(1)\n"
            "print(f'{model_name} {second} holds for approval:', {key: value for key, value in registered_properties(client, model_name, second).items() if key.startswith('approved')})"
        ),
        new_code_cell(
            "model_pipelines('approve', model_name, second, '--by', 'notebook-user', *registry)\n"
            "output, _ = rollout.communicate()\n"
            "print(output)\n"
            "assert rollout.returncode == 0, 'the rollout failed: see its output above'"
        ),
        new_markdown_cell("What the registry now holds: the model, each version with its state and properties, and its artifact."),
        new_code_cell(
            "model = client.find_registered_model(model_name)\n"
            "print(f\"{model['name']} (id {model['id']}, owner {model.get('owner')}): {model.get('description')}\")\n"
            "for version in (first, second):\n"
            "    found = client.find_model_version(version, model['id'])\n"
            "    properties = plain_values(found['customProperties'])\n"
            "    shown = {key: properties.get(key) for key in ('status', 'approved', 'approved_by', 'approved_at', 'pipeline_run_id')}\n"
            "    artifact = client.model_artifacts(found['id'])[0]\n"
            "    print(f\"  {version} {found['state']:<8} {shown} sha256 {str(properties['sha256'])[:12]}…\")\n"
            "    print(f\"       artifact {artifact['uri']} ({artifact['modelFormatName']} {artifact['modelFormatVersion']})\")"
        ),
        new_code_cell("model_pipelines('serve', 'stop')"),
    ],
}


def keep_cell_ids(cells: list, path: Path) -> None:
    """Give each cell whose source is unchanged the id it has in the notebook at ``path``, so diffs show only real changes."""
    if path.exists():
        previous = {cell.source: cell.id for cell in nbformat.read(path, as_version=4).cells}
        for cell in cells:
            cell.id = previous.get(cell.source, cell.id)


def main() -> None:
    """Write every notebook, without outputs."""
    directory = Path(__file__).resolve().parents[1] / "notebooks"
    for name, (title, *cells) in NOTEBOOKS.items():
        cells = [title, new_code_cell(INSTALL_CELL), *cells]
        keep_cell_ids(cells, directory / name)
        notebook = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
        nbformat.write(notebook, directory / name)


if __name__ == "__main__":
    main()
