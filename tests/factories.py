import factory

from domains.models import Domain


class DomainFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Domain

    name = factory.Sequence(lambda n: f"domain-{n}")
    workspace_path = factory.LazyFunction(lambda: "/tmp")
    program_path = factory.LazyAttribute(lambda o: f"{o.workspace_path}/PROGRAM.md")
    setup_path = factory.LazyAttribute(lambda o: f"{o.workspace_path}/SETUP.md")
