"""``python -m services.notifier``"""

from services.notifier.app import SERVICE, create_app
from services.notifier.settings import NotifierSettings
from shared.service import main

if __name__ == "__main__":
    main(SERVICE, NotifierSettings.from_env, create_app)
