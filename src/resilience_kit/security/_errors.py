"""The token errors are defined in `resilience_kit.errors`; re-imported for the package."""

from resilience_kit.errors import MalformedTokenError as MalformedTokenError
from resilience_kit.errors import TokenAlgorithmError as TokenAlgorithmError
from resilience_kit.errors import TokenClaimError as TokenClaimError
from resilience_kit.errors import TokenExpiredError as TokenExpiredError
from resilience_kit.errors import TokenKeyError as TokenKeyError
from resilience_kit.errors import TokenNotYetValidError as TokenNotYetValidError
from resilience_kit.errors import TokenRejectedError as TokenRejectedError
from resilience_kit.errors import TokenRevokedError as TokenRevokedError
from resilience_kit.errors import TokenSignatureError as TokenSignatureError
from resilience_kit.errors import ValidatorUnavailableError as ValidatorUnavailableError
