# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Documentation of the app definition shared by every module (see module_utils/_app.py)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  app:
    description:
      - The app, as declared in the inventory's C(rollback_apps) list.
      - One Docker Compose project on this host.
    type: dict
    required: true
    suboptions:
      name:
        description:
          - Name of the app; names its ledger directory.
          - Lower-case letters, digits, C(-) and C(_).
        type: str
        required: true
      project_dir:
        description: Directory that holds the compose file(s) and the C(.env) file.
        type: path
        required: true
      project_name:
        description:
          - Compose project name.
          - Defaults to the name C(docker compose) itself gives the project in O(app.project_dir) (in this order,
            C(COMPOSE_PROJECT_NAME) from the environment or the env file, the compose file's top-level C(name:),
            the directory's name), so a project started there with a plain C(docker compose up -d) is found.
          - When that name is only a default (the directory's name or the compose file's C(name:)) and the containers
            started from O(app.project_dir) with the same compose files all carry one other project name (the
            project was brought up with C(docker compose -p NAME) or C(COMPOSE_PROJECT_NAME) in the shell), that
            name is taken, with a warning to set it here (C(project_name_from=containers) in the results that
            report it).
          - When this option or C(COMPOSE_PROJECT_NAME) names another project than the running containers carry,
            when two projects' containers claim the directory, or when their compose files differ, every module
            that reads or changes the app stops and names the value to set here.
        type: str
      compose_files:
        description:
          - Compose files, relative to O(app.project_dir) or absolute, in the order Compose merges them.
          - Defaults to what C(docker compose) reads in O(app.project_dir) when it is given no C(-f) option,
            C(COMPOSE_FILE) (from the environment or the env file, split at C(COMPOSE_PATH_SEPARATOR)), or else the
            first of C(compose.yaml), C(compose.yml), C(docker-compose.yml), C(docker-compose.yaml) plus the first of
            C(compose.override.yml), C(compose.override.yaml), C(docker-compose.override.yml),
            C(docker-compose.override.yaml).
          - When the running containers say they were started with other files, modules stop and name them.
          - Profiles are Compose's own (C(COMPOSE_PROFILES) in the environment or the env file).
        type: list
        elements: str
      env_file:
        description:
          - The project's env file, relative to O(app.project_dir) or absolute.
          - Its values are read for interpolation and fingerprints, never recorded or logged.
          - Values are what Compose makes of the file (quotes, escapes, C(${VAR}) references, comments); a
            release's fingerprint takes them from C(docker compose config) itself.
        type: str
        default: .env
      health:
        description: How to ask the app whether it is healthy.
        type: dict
        suboptions:
          url:
            description: Health URL, answered with a 2xx status when the app is healthy.
            type: str
          urls:
            description: Further URLs probed by health gates.
            type: list
            elements: str
            default: []
          timeout:
            description: Seconds to wait for one answer.
            type: float
            default: 3.0
      smoke:
        description:
          - Requests that touch the app's data, each with the answer it must give - for example a query that must return
            known ids. A heartbeat URL says the code runs; a smoke request says it can read what it holds.
          - Sent to the scheme and host of O(app.health.url) by every health gate after a switch (upgrade, rollback,
            revert) and by the health baseline, and to the copy by every drill. A release that boots but cannot read its
            data fails its gate and its drill.
          - A request that fails when the baseline is recorded stops the pre-upgrade before anything changes.
        type: list
        elements: dict
        default: []
        suboptions:
          path:
            description: The path and query, for example V(/search?q=invoice).
            type: str
            required: true
          method:
            description: HTTP method.
            type: str
            default: GET
          body:
            description: Request body.
            type: str
          content_type:
            description: The C(Content-Type) of O(app.smoke[].body), for example V(application/json).
            type: str
          status:
            description: The status expected.
            type: int
            default: 200
          contains:
            description: Text the answer must contain (an id, a title).
            type: str
          matches:
            description: A regular expression the answer must match (Python's C(re.search)).
            type: str
          json:
            description:
              - "Values the answer, read as JSON, must hold, by dotted path (list items by index), for example
                V({\"choices.0.finish_reason\": \"stop\", \"model\": \"llama3\"})."
            type: dict
          timeout:
            description: Seconds to wait for the answer.
            type: float
            default: 5
      signals:
        description:
          - Numbers the app is judged by beyond HTTP status - an answer's quality score, its cost or tokens per request,
            a queue's depth, an answer's length. Each is read from a JSON answer of the app (O(app.signals[].path) and
            O(app.signals[].json)) or from the output of a command in a service (O(app.signals[].command)).
          - Every health gate reads them once the app is healthy and judges each by its absolute limits and by its ratio
            to the value the baseline recorded; so the upgrade gate reverts a release that degrades quality or cost with
            every probe answering 200, and the gate after a rollback shows the numbers recovered.
          - Recording a baseline reads them too; one that cannot be read, or breaks an absolute limit, stops the
            pre-upgrade before anything changes.
        type: list
        elements: dict
        default: []
        suboptions:
          name:
            description: The signal's name, unique in the app.
            type: str
            required: true
          path:
            description: A request to the app (path and query, sent to the host of O(app.health.url)) whose answer holds the number.
            type: str
          method:
            description: HTTP method of O(app.signals[].path).
            type: str
            default: GET
          body:
            description: Request body of O(app.signals[].path), for example a fixed question for a chat endpoint.
            type: str
          content_type:
            description: The C(Content-Type) of O(app.signals[].body).
            type: str
          service:
            description: The service O(app.signals[].command) runs in (its running container).
            type: str
          command:
            description: A command whose output holds the number (its last line, or the JSON at O(app.signals[].json)).
            type: list
            elements: str
          json:
            description: Dotted path to the number in the JSON answer or output, for example V(usage.total_tokens).
            type: str
          samples:
            description: Reads per gate; the median is judged.
            type: int
            default: 1
          min:
            description: The lowest value allowed.
            type: float
          max:
            description: The highest value allowed.
            type: float
          min_ratio:
            description: The lowest value allowed, as a ratio to the baseline's value (V(0.9) is 90% of it).
            type: float
          max_ratio:
            description: The highest value allowed, as a ratio to the baseline's value (V(1.5) is 150% of it).
            type: float
          timeout:
            description: Seconds to wait for each read.
            type: float
            default: 10
      databases:
        description: Databases captured by logical dumps.
        type: list
        elements: dict
        default: []
        suboptions:
          service:
            description: Compose service running the database.
            type: str
            required: true
          engine:
            description: Database engine.
            type: str
            required: true
            choices: [postgres, mysql, mariadb, sqlite]
          database:
            description: Database name (for C(sqlite), a name for the dump).
            type: str
            required: true
          user:
            description: Database user; connections use the container's local socket, so no password is passed.
            type: str
          path:
            description:
              - For C(sqlite), the database file's path inside the container.
              - When the file lies in a volume the backup captures together with other files (an embedded
                database next to its index files), it is captured with that volume, while the volume's writers are
                quiesced, and restored with it, once; otherwise (alone in its volume, or outside every captured
                volume) it is copied with SQLite's online backup, with no pause.
            type: str
      volumes:
        description:
          - Named volumes to capture, by their name in the compose file.
          - Defaults to every named volume of the project.
        type: list
        elements: str
      paths:
        description: Bind-mounted directories to capture, relative to O(app.project_dir).
        type: list
        elements: str
        default: []
      schema_probe:
        description:
          - How to read the app's schema version, for any engine, with exactly one of O(app.schema_probe.sql) and
            O(app.schema_probe.command).
        type: dict
        suboptions:
          service:
            description: Compose service to run the query or the command in.
            type: str
            required: true
          sql:
            description:
              - Query returning one value, run with the client of the service's O(app.databases) entry
                (C(psql), C(mysql), or C(sqlite3) on its O(app.databases[].path)).
            type: str
          command:
            description:
              - A command run in the service (no shell), whose first line of output is the schema version;
                for an engine without a client there, or a version kept in a file
                (for example V([python3, -c, "import sqlite3; print(sqlite3.connect('/data/app.db').execute('pragma user_version').fetchone()[0])"])).
            type: list
            elements: str
          database:
            description: Database to query. Defaults to the first O(app.databases) entry of that service.
            type: str
          user:
            description: Database user. Defaults to the first O(app.databases) entry of that service.
            type: str
          additive:
            description:
              - Schema versions reached by additive migrations, on which code written for the
                version before still runs (for example V(["2"]) when schema 2 only added a column).
              - The compatibility gate lets a release run on a newer schema when every step up to
                it is listed here; any other step needs the data restored.
            type: list
            elements: str
            default: []
      one_shot:
        description:
          - Services that run to completion by design (a schema migration, an init job), besides those another
            service waits for with C(condition=service_completed_successfully) in its C(depends_on), which are
            found by themselves.
          - Health gates and baselines judge them by their exit code (0 is healthy), switches count an exited-0
            container as up to date, and backups do not pause them.
        type: list
        elements: str
        default: []
      consistency:
        description:
          - How writers are kept still while each volume or path (by its name in O(app.volumes) or
            O(app.paths)) is read by a backup; what the O(selfhost.rollback.backup#module:consistency)
            option of a backup task adds or overrides.
          - V(pause) (the default) freezes the containers that mount it; V(stop) stops them and starts
            them again (for writers that must flush, or a database file inside the volume); V(none)
            reads it live.
        type: dict
        default: {}
      pins:
        description:
          - Where the digest pins of the app's images live.
          - V(compose_files) writes C(@sha256:...) into the image lines of the compose files (only those bytes change).
          - V(own_file) leaves the project's files untouched, for a deploy tool that templates C(compose.yaml), and
            keeps the pins in the collection's own compose file C(<store>/<app>/pins.yaml), which every Compose call
            of the collection adds after the project's files. By hand, run
            C(docker compose -f compose.yaml [-f compose.override.yaml] -f <store>/<app>/pins.yaml up -d); a plain
            C(docker compose up -d) runs what the tags name.
        type: str
        choices: [compose_files, own_file]
        default: compose_files
      version_locks:
        description: Groups of services that must always run the same version.
        type: list
        elements: list
        default: []
      artifacts:
        description: Extra artifacts recorded by digest in a release (model files, or a command's output such as a model list).
        type: list
        elements: dict
        default: []
        suboptions:
          name:
            description: Name of the artifact in the release.
            type: str
            required: true
          path:
            description: File or directory, relative to O(app.project_dir) or absolute.
            type: str
          command:
            description: Command (argv list) whose output is recorded by digest.
            type: list
            elements: str
          keep:
            description:
              - Keep a copy in the ledger (C(<store>/<app>/artifacts/), once per digest, 0600) when a release records it, so
                that a rollback with scope V(artifacts) can put it back by digest. For a command, its output is kept, so that
                the rollback can say which lines differ.
              - Set V(false) for artifacts too large to copy; a rollback then names what to put back by hand.
            type: bool
            default: true
          restart:
            description: Services restarted (C(docker compose restart)) after a rollback of scope V(artifacts) put this artifact back.
            type: list
            elements: str
            default: []
  store:
    description: Root of the ledger on the managed host; each app has a directory below it.
    type: path
    default: /var/lib/selfhost-rollback
"""
