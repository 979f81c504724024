# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The restic repository option shared by the backup set modules (see module_utils/_restic.py)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  restic:
    description:
      - The restic repository where sets with the restic backend are stored.
      - Needed to write such sets (M(selfhost.rollback.backup) with O(selfhost.rollback.backup#module:backend=restic))
        and to read them back (verify, restore, prune, drill).
    type: dict
    suboptions:
      repository:
        description: Repository location, as for C(restic -r).
        type: str
        required: true
      password:
        description: Repository password; handed to restic through a private temporary file, never on a command line.
        type: str
      password_file:
        description: File holding the repository password.
        type: path
      env:
        description:
          - Extra environment for restic, for example the C(AWS_ACCESS_KEY_ID) and C(AWS_SECRET_ACCESS_KEY) of an S3 bucket or the
            C(B2_ACCOUNT_ID) and C(B2_ACCOUNT_KEY) of a Backblaze B2 bucket (C(no_log)).
        type: dict
        default: {}
      options:
        description:
          - restic's extended options, each passed as C(-o OPTION) to every restic command, for example
            V(sftp.command=ssh backup@nas.example -i /root/.ssh/backup -s sftp) for an SFTP repository.
        type: list
        elements: str
        default: []
"""
