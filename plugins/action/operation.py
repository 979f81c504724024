# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Control-node half of the ``operation`` module.

Only the control node can tell whether the run that opened a journal still goes on (its
ansible-playbook process), so this plugin names this run for the module and, when the
module finds an open journal, decides with ``_operation.classify_pending`` whether it was
interrupted (finish it) or is still under way elsewhere (leave it alone and stop).
"""

from __future__ import annotations

from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase

from ansible_collections.selfhost.rollback.plugins.lookup.run_owner import identity, owner_state
from ansible_collections.selfhost.rollback.plugins.module_utils import _operation


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        me = identity()
        args["run_owner"] = me
        result.update(self._execute_module(module_name="selfhost.rollback.operation", module_args=args,
                                           task_vars=task_vars))
        journal = result.get("pending")
        if result.get("failed") or args.get("state", "inspect") != "inspect" or not journal:
            return result
        state = owner_state(journal.get("owner") or {}, me)
        app = (args.get("app") or {}).get("name", "?")
        verdict = _operation.classify_pending(journal, state, app, boolean(args.get("take_over", False), strict=False))
        result.update(outcome=verdict["outcome"], reasons=verdict["reasons"], msg=verdict["msg"], owner_state=state)
        if verdict["failed"]:
            result["failed"] = True
        return result
