"""Client-side diagnostics, trust distribution and support bundles.

* ``run``      -- `harborctl doctor`: the checks in order, timed, the last result kept.
* ``checks``   -- dns, tcp, tls, registry challenge, realm, token, clock;
  ``probe`` -- the push probe and the image check; ``harbor`` -- health, systeminfo, space.
* ``tls``      -- what the server presents and whether a client would accept it.
* ``wire``     -- HTTP to a chosen address with a timeout per step, no redirects followed.
* ``findings`` -- stable finding ids, severities and fixes (data), the report.
* ``trust``    -- `harborctl trust` (playbooks/trust.yml).
* ``bundle``, ``redact`` -- `harborctl support-bundle` and its secret filters.
"""
