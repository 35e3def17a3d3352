from django.conf import settings
from django.db import models
from django.urls import reverse


class KnowledgeAtom(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUPERSEDED = "superseded", "Superseded"
        RETRACTED = "retracted", "Retracted"

    domain = models.ForeignKey(
        "domains.Domain", null=True, blank=True, on_delete=models.CASCADE, related_name="atoms",
        help_text="Null means global knowledge.",
    )
    context = models.TextField(help_text="When this applies.")
    claim = models.TextField(help_text="What was found.")
    action = models.TextField(blank=True, help_text="What to do about it.")
    confidence = models.FloatField(default=0.5)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.ACTIVE)
    version = models.PositiveIntegerField(default=1)
    supersedes = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="superseded_by"
    )
    evidence = models.ManyToManyField("experiments.Experiment", through="Evidence", related_name="atoms")
    related = models.ManyToManyField("self", blank=True, symmetrical=True)
    created_by_run = models.ForeignKey(
        "agentrun.AgentRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="atoms"
    )
    created_by_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="atoms"
    )
    contradictions = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-confidence", "-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(confidence__gte=0) & models.Q(confidence__lte=1),
                name="atom_confidence_range",
            ),
        ]
        indexes = [
            # Runs start from a domain's active atoms.
            models.Index(fields=["domain", "status"], name="atom_domain_status_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.claim[:80]} (v{self.version})"

    def get_absolute_url(self) -> str:
        return reverse("knowledge:detail", args=[self.pk])

    def summary(self) -> dict:
        """A JSON-ready dict for the CLI's --json output and the agent's context."""
        return {
            "id": self.pk,
            "domain_id": self.domain_id,
            "domain": self.domain.name if self.domain_id else None,
            "context": self.context,
            "claim": self.claim,
            "action": self.action,
            "confidence": self.confidence,
            "status": self.status,
            "version": self.version,
            "supersedes_id": self.supersedes_id,
            "contradictions": self.contradictions,
            "evidence": [
                {"experiment_id": link.experiment_id, "stance": link.stance}
                | ({"claim": link.claim} if link.claim else {})
                for link in self.evidence_links.all()
            ],
            "created_at": self.created_at.isoformat(),
        }

    def linking_text(self) -> str:
        """The text that decides whether two atoms say the same thing."""
        return f"{self.context}\n{self.claim}"

    def search_text(self) -> str:
        return f"{self.context}\n{self.claim}\n{self.action}"

    def older_versions(self) -> list["KnowledgeAtom"]:
        """The versions this one replaced, newest first (follows `supersedes`)."""
        chain: list[KnowledgeAtom] = []
        seen = {self.pk}
        atom = self.supersedes
        # `seen` guards against a cycle an admin could create by hand.
        while atom is not None and atom.pk not in seen:
            chain.append(atom)
            seen.add(atom.pk)
            atom = atom.supersedes
        return chain

    def newer_versions(self) -> list["KnowledgeAtom"]:
        """The versions that replaced this one, oldest first."""
        chain: list[KnowledgeAtom] = []
        seen = {self.pk}
        atom = self.superseded_by.order_by("-version", "-pk").first()
        while atom is not None and atom.pk not in seen:
            chain.append(atom)
            seen.add(atom.pk)
            atom = atom.superseded_by.order_by("-version", "-pk").first()
        return chain


class Evidence(models.Model):
    class Stance(models.TextChoices):
        SUPPORTS = "supports", "Supports"
        CONTRADICTS = "contradicts", "Contradicts"

    atom = models.ForeignKey(KnowledgeAtom, on_delete=models.CASCADE, related_name="evidence_links")
    experiment = models.ForeignKey("experiments.Experiment", on_delete=models.CASCADE)
    stance = models.CharField(max_length=20, choices=Stance.choices, default=Stance.SUPPORTS)
    # A merge combines several claims into one atom; each experiment stays cited for the claim it
    # was evidence of, so the merged atom never lends it to another claim. Empty: the atom's own claim.
    claim = models.TextField(blank=True, help_text="The claim this experiment is evidence for, when not the atom's own.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["atom", "experiment", "claim"], name="evidence_unique_claim"),
        ]

    def __str__(self) -> str:
        return f"{self.experiment_id} {self.stance} atom {self.atom_id}"

    def get_absolute_url(self) -> str:
        return self.atom.get_absolute_url()
