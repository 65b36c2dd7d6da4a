"""``python -m services.intake``"""

from services.intake.app import SERVICE, create_app
from services.intake.settings import IntakeSettings
from shared.service import main

if __name__ == "__main__":
    main(SERVICE, IntakeSettings.from_env, create_app, lambda settings: settings.compat.tls)
