"""``python -m services.operator``"""

from services.operator.app import create_app
from services.operator.resources import SERVICE
from services.operator.settings import OperatorSettings
from shared.service import main

if __name__ == "__main__":
    main(SERVICE, OperatorSettings.from_env, create_app)
