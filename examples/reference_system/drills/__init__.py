"""The failure drills, one module per service; importing this package registers them.

To add a drill module, create ``drills/<service>.py`` with functions decorated by
`reference_system.core.drill.drill`, and import it here.
"""

from . import analytics as analytics
from . import audit as audit
from . import baseline as baseline
from . import billing as billing
from . import cross as cross
from . import identity as identity
from . import notification as notification
from . import organization as organization
from . import workflow as workflow
