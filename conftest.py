pytest_plugins = ["tollgate_dev.pytest_plugin"]
