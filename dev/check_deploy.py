"""Static checks of what the repository ships for deployment (no Docker engine).

    check_deploy.py compose FILE           validate against the Compose specification's JSON schema
    check_deploy.py kubernetes VERSION [KIND=APIVERSION ...]
                                           validate Kubernetes YAML (stdin, many documents);
                                           custom resources named KIND must carry APIVERSION

`compose` takes the schema from the docker-compose 1.29.2 wheel on PyPI
(compose/config/compose_spec.json), downloaded once into .dev/. `kubernetes` uses
kubernetes-validate; kinds it has no schema for (custom resources) are listed, not
passed silently. Prints one line per problem; exits 1 if there is any.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_WHEEL = "docker-compose==1.29.2"


def compose_schema() -> dict:
    cache = ROOT / ".dev" / "compose_spec.json"
    if not cache.exists():
        wheels = ROOT / ".dev" / "wheels"
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(wheels), COMPOSE_WHEEL],
            check=True,
        )
        wheel = next(wheels.glob("docker_compose-1.29.2-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            cache.write_bytes(z.read("compose/config/compose_spec.json"))
    return json.loads(cache.read_text())


def check_compose(path: str) -> list[str]:
    doc = yaml.safe_load(Path(path).read_text())
    validator = jsonschema.Draft7Validator(compose_schema())
    return [f"{path}: {'/'.join(map(str, e.absolute_path)) or '.'}: {e.message}" for e in validator.iter_errors(doc)]


def check_kubernetes(version: str, text: str, custom: dict[str, str]) -> list[str]:
    import kubernetes_validate

    problems = []
    for doc in yaml.safe_load_all(text):
        if not doc:
            continue
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if doc.get("kind") in custom:
            # A custom resource: Kubernetes has no schema for it; its API must match.
            if doc.get("apiVersion") != custom[doc["kind"]]:
                problems.append(f"{name}: apiVersion {doc.get('apiVersion')}, expected {custom[doc['kind']]}")
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{name}: no schema for {doc.get('apiVersion')} {doc.get('kind')} (custom resource)")
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{name}: {'/'.join(map(str, e.path)) or '.'}: {e.message}")
    return problems


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "compose":
        problems = check_compose(sys.argv[2])
    elif len(sys.argv) >= 3 and sys.argv[1] == "kubernetes":
        custom = dict(arg.split("=", 1) for arg in sys.argv[3:])
        problems = check_kubernetes(sys.argv[2], sys.stdin.read(), custom)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
